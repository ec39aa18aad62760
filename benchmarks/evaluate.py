"""Benchmark the evaluation suite at scale: 100,000 held-out embeddings x 384 dims, 5 domains, 2 classes, CPU.

Times (1) everything the budget covers — all separation metrics (FD, class FD, raw FD, sliced W2, MMD²),
batch mixing (silhouette-batch, iLISI, kBET) and the probe metrics (AUC, F1, balanced accuracy,
Brier, ECE), each with 200-replicate bootstrap intervals; (2) the same without intervals; (3) the
protocols and the sparse signature (outside the budget); and the peers in the same run: scib-metrics
on the same mixing subsample (its own pynndescent neighbours, as its Benchmarker does) and the
pytorch-fid style Fréchet distance (numpy covariance + scipy sqrtm). Prints one markdown table.

    python benchmarks/evaluate.py            # ~2-4 min on a 2-core CPU (scib-metrics installed)
    python benchmarks/evaluate.py --n 20000  # quicker look
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import resource
import runpy
import time
from collections.abc import Callable

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from scipy import linalg  # noqa: E402

from lmc_jax.evaluate.kernels import integration, separation  # noqa: E402
from lmc_jax.evaluate.settings import Settings  # noqa: E402
from lmc_jax.evaluate.suite import MethodEmbeddings, evaluate_embeddings  # noqa: E402

DEFAULTS = Settings.from_config(runpy.run_path(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                            "configs", "default.py"))["get_config"]().eval)

DOMAINS = ["source", "d1", "d2", "d3", "d4"]


def synthetic(n: int, dim: int, seed: int = 0) -> MethodEmbeddings:
    """n held-out rows over 5 domains (shifted and rescaled on a random subspace, growing with the domain index),
    a label direction, 40 patients per domain with their own offsets, and n / 5 source train rows."""
    rng = np.random.default_rng(seed)
    per = n // len(DOMAINS)
    label_dir = rng.normal(size=dim) / np.sqrt(dim)
    shift_dirs = rng.normal(size=(len(DOMAINS), dim)) / np.sqrt(dim)

    def rows(domain: int, count: int, patient_offset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, count)
        patients = rng.integers(0, 40, count) + patient_offset
        x = rng.normal(size=(count, dim)).astype(np.float32)
        x += (2.5 * y[:, None] * label_dir + 0.6 * domain * shift_dirs[domain]).astype(np.float32)
        x += 0.3 * rng.normal(size=(patients.max() + 1, dim)).astype(np.float32)[patients]
        x[:, : dim // 8] *= 1.0 + 0.15 * domain
        return x, y, patients

    held = [rows(d, per, 100 * d) for d in range(len(DOMAINS))]
    train_x, train_y, train_groups = rows(0, per, 1000)
    return MethodEmbeddings(
        train=train_x, train_labels=train_y, heldout=np.concatenate([h[0] for h in held]),
        heldout_labels=np.concatenate([h[1] for h in held]),
        heldout_sites=np.repeat(np.arange(len(DOMAINS)), per), train_groups=train_groups,
        heldout_groups=np.concatenate([h[2] for h in held]))


def timed(f: Callable):
    """(f(), wall seconds)."""
    start = time.perf_counter()
    out = f()
    return out, time.perf_counter() - start


def suite_run(m: MethodEmbeddings, settings: Settings) -> dict:
    """The suite's result for one method on the 5 synthetic domains."""
    return evaluate_embeddings({"m": m}, site_names=DOMAINS, source_site="source", key=jax.random.key(0),
                               settings=settings)["methods"]["m"]


def mixing_subsample(m: MethodEmbeddings, total: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The suite's stratified subsample for the mixing metrics, source-standardised."""
    rng = np.random.default_rng(0)
    sites = np.asarray(m.heldout_sites)
    z = separation.standardize(m.heldout, m.heldout[sites == 0])
    rows = np.concatenate([rng.choice(np.flatnonzero(sites == d), total // len(DOMAINS), replace=False)
                           for d in range(len(DOMAINS))])
    return z[rows], np.asarray(m.heldout_labels)[rows], sites[rows]


def ours_mixing(z, labels, batch) -> dict:
    """iLISI (k = 90), kBET (k = 50) and silhouette-batch with our exact kNN, as the suite computes them."""
    idx, dist = integration.knn(z, 90)
    return {"ilisi": integration.ilisi_score(integration.lisi(idx, dist, batch), len(DOMAINS))[0],
            "kbet": integration.kbet_cells(idx[:, :50], batch)[0].mean(),
            "silhouette_batch": integration.silhouette_batch_score(
                integration.silhouette_batch_cells(z, labels, batch), labels)[0]}


def scib_mixing(z, labels, batch) -> dict:
    """The same three numbers through scib-metrics, with the pynndescent neighbours its Benchmarker uses."""
    import scib_metrics
    from scib_metrics.nearest_neighbors import pynndescent

    graph = pynndescent(z, n_neighbors=90, random_state=0)
    return {"ilisi": float(scib_metrics.ilisi_knn(graph, batch)),
            "kbet": float(scib_metrics.kbet(graph.subset_neighbors(50), batch)[0]),
            "silhouette_batch": float(scib_metrics.silhouette_batch(z, labels, batch))}


def pytorch_fid_style(x: np.ndarray, y: np.ndarray) -> float:
    """The widely copied pytorch-fid computation: float64 covariances and scipy.linalg.sqrtm of the product."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean))


def main() -> None:
    """Run every timing and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="held-out embeddings over 5 domains")
    parser.add_argument("--dim", type=int, default=384)
    args = parser.parse_args()
    load = os.getloadavg()[0]  # other processes on the machine slow every row alike
    m = synthetic(args.n, args.dim)
    budget = DEFAULTS.replace(protocols=(), signature_folds=0)
    rows = [("data", f"{args.n:,} held-out + {len(m.train):,} train × {args.dim}, 5 domains, 2 classes, "
                     f"{len(np.unique(m.heldout_groups))} patients", "", "", "")]
    suite_run(synthetic(2000, args.dim, seed=1), budget)  # compile once, as a second evaluation would find it
    result, full = timed(lambda: suite_run(m, budget))
    rows.append(("separation + mixing + probe, 95% CIs (200 replicates)", f"{full:.1f} s", "", "",
                 f"≤ 60 s: {'PASS' if full <= 60 else 'FAIL'}"))
    _, bare = timed(lambda: suite_run(m, dataclasses.replace(budget, bootstrap_replicates=0)))
    rows.append(("the same without intervals", f"{bare:.1f} s", "", "", ""))
    _, proto = timed(lambda: suite_run(m, dataclasses.replace(budget, bootstrap_replicates=0,
                                                              protocols=("cross_site", "leave_one_domain_out"))))
    rows.append(("+ cross_site and leave_one_domain_out (5 patient folds)", f"{proto - bare:.1f} s", "", "",
                 "outside the budget"))
    _, sig = timed(lambda: suite_run(m, dataclasses.replace(budget, bootstrap_replicates=0, signature_folds=5)))
    rows.append(("+ sparse signature (5-fold grouped CV, 20 λ, 20 stability refits)", f"{sig - bare:.1f} s", "", "",
                 "outside the budget"))

    z, labels, batch = mixing_subsample(m, DEFAULTS.integration_max_samples)
    ours_vals, ours_t = timed(lambda: ours_mixing(z, labels, batch))
    if importlib.util.find_spec("scib_metrics"):
        scib_vals, scib_t = timed(lambda: scib_mixing(z, labels, batch))
        agree = ", ".join(f"{k} {ours_vals[k]:.3f}/{scib_vals[k]:.3f}" for k in ours_vals)
        rows.append((f"mixing metrics on {len(z):,} cells (ours / scib-metrics)", f"{ours_t:.1f} s", f"{scib_t:.1f} s",
                     f"{scib_t / ours_t:.1f}x", f"values ours/scib: {agree}"))
    else:
        rows.append(("mixing metrics (scib-metrics not installed)", f"{ours_t:.1f} s", "n/a", "", ""))
    sites = np.asarray(m.heldout_sites)
    x, y = np.asarray(m.heldout)[sites == 0], np.asarray(m.heldout)[sites == 4]
    ours_fd, fd_t = timed(lambda: separation.frechet_distance(x, y))
    peer_fd, peer_t = timed(lambda: pytorch_fid_style(x.astype(np.float64), y.astype(np.float64)))
    rows.append((f"one raw FD, {len(x):,} vs {len(y):,} rows (ours / pytorch-fid style)", f"{fd_t:.2f} s",
                 f"{peer_t:.2f} s", f"{peer_t / fd_t:.1f}x", f"FD {ours_fd:.4f} / {peer_fd:.4f}"))
    summary = result["summary"]
    rows.append(("sanity: mean unseen FD/D, iLISI, kBET, unseen AUC",
                 f"{summary['mean_unseen_fd']:.3f}, {summary['ilisi']:.3f}, {summary['kbet']:.3f}, "
                 f"{summary['mean_unseen_auc']:.3f}", "", "", ""))
    rows.append(("peak resident memory", f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB",
                 "", "", f"{os.cpu_count()} CPUs, jax {jax.__version__}, load average {load:.1f} at start"))
    print("| what | ours | peer | peer / ours | note |\n| :--- | ---: | ---: | ---: | :--- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
