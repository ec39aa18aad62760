"""The report's figures as PNG files: embedding projections, per-site AUC with intervals, reliability, signatures.

Pure matplotlib (object API, no global pyplot state); each function takes the metrics dict or the
projections and writes one file (through etils.epath, so `gs://` output folders work).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
from etils import epath
from matplotlib.figure import Figure

DPI = 110
_MARKERS = "osD^vP*Xhp"


def _save(fig: Figure, path: epath.PathLike) -> epath.Path:
    """Writes `fig` as PNG bytes to `path` (local or remote); returns the path."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    path = epath.Path(path)
    path.write_bytes(buffer.getvalue())
    return path


class Projection(NamedTuple):
    """2-D coordinates of one method's held-out embeddings with each point's site index and label."""

    xy: np.ndarray  # (M, 2)
    sites: np.ndarray  # (M,) index into metrics["sites"]
    labels: np.ndarray  # (M,) 0/1


def pca_2d(x: np.ndarray) -> np.ndarray:
    """Project rows of x (M, D) onto their top two principal components (M, 2), signs fixed for reproducibility.

    Missing components (D < 2 or rank < 2) are returned as zeros.
    """
    x = np.asarray(x, np.float64)
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    components = np.zeros((2, x.shape[1]))
    components[: min(2, vt.shape[0])] = vt[:2]
    signs = np.sign(components[np.arange(2), np.argmax(np.abs(components), axis=1)])
    return centred @ (components * np.where(signs == 0, 1.0, signs)[:, None]).T


def _site_label(site: str, source: str) -> str:
    return f"{site} (source)" if site == source else site


def plot_projections(projections: Mapping[str, Projection], site_names: list[str], source_site: str,
                     path: epath.PathLike) -> epath.Path:
    """Per method, two PCA panels of the held-out embeddings: coloured by site, then by label."""
    fig = Figure(figsize=(13.0, 4.2 * len(projections)), dpi=DPI, layout="constrained")
    axes = fig.subplots(len(projections), 2, squeeze=False)
    for (ax_site, ax_label), (name, p) in zip(axes, projections.items()):
        xy, sites, labels = np.asarray(p.xy), np.asarray(p.sites), np.asarray(p.labels)
        for i, site in enumerate(site_names):
            pts = xy[sites == i]
            if len(pts):
                ax_site.scatter(pts[:, 0], pts[:, 1], s=10, alpha=0.6, color=f"C{i % 10}", linewidths=0,
                                marker=_MARKERS[i % len(_MARKERS)], label=_site_label(site, source_site))
        for label, colour in ((0, "#1f77b4"), (1, "#d62728")):
            pts = xy[labels == label]
            if len(pts):
                ax_label.scatter(pts[:, 0], pts[:, 1], s=10, alpha=0.5, color=colour, linewidths=0,
                                 label=f"label {label}")
        for ax, kind, title in ((ax_site, "site", "by site"), (ax_label, "label", "by label")):
            ax.set(title=f"{name}: PCA of held-out embeddings, {title}", xlabel="PC 1", ylabel="PC 2")
            ax.legend(fontsize="small", markerscale=1.8, title=kind, title_fontsize="small", loc="upper left",
                      bbox_to_anchor=(1.01, 1.0))  # outside: never hides points
    return _save(fig, path)


def _interval(entry: Mapping, metric: str) -> tuple[float, float, float] | None:
    """(value, lower error, upper error) of a metric with its interval; None if undefined."""
    value = entry.get(metric)
    if value is None:
        return None
    lo, hi = entry.get("ci", {}).get(metric, (value, value))
    return value, max(value - lo, 0.0), max(hi - value, 0.0)


def dodged_points(ax, methods: Mapping[str, Mapping[str, Mapping]], domains: list[str], metric: str) -> None:
    """One marker series with error bars per method, dodged horizontally around each domain."""
    width = 0.7 / max(len(methods), 1)
    for j, (name, per_domain) in enumerate(methods.items()):
        xs, ys, errs = [], [], []
        for i, d in enumerate(domains):
            point = _interval(per_domain.get(d, {}), metric)
            if point:
                xs.append(i - 0.35 + width * (j + 0.5))
                ys.append(point[0])
                errs.append(point[1:])
        if xs:
            ax.errorbar(xs, ys, yerr=np.array(errs).T, fmt=_MARKERS[j % len(_MARKERS)], color=f"C{j % 10}",
                        capsize=3, markersize=6, label=name)


def plot_auc(metrics: Mapping, path: epath.PathLike) -> epath.Path:
    """Probe ROC AUC per site with 95% intervals (source-trained probe), and per held-out domain under LODO."""
    sites, source = list(metrics["sites"]), metrics["source_site"]
    lodo = {n: m["protocols"]["leave_one_domain_out"].get("per_domain", {})
            for n, m in metrics["methods"].items() if "leave_one_domain_out" in m.get("protocols", {})}
    panels = [("Probe trained on the source site", {n: m["per_site"] for n, m in metrics["methods"].items()})]
    if any(lodo.values()):
        panels.append(("Leave one domain out (patient-disjoint folds)", lodo))
    fig = Figure(figsize=(max(8.5, 1.3 * len(sites) + 4.5), 4.0 * len(panels)), dpi=DPI, layout="constrained")
    for ax, (title, methods) in zip(fig.subplots(len(panels), 1, squeeze=False)[:, 0], panels):
        dodged_points(ax, methods, sites, "auc")
        ax.axhline(0.5, color="grey", linestyle=":", linewidth=1, label="chance")
        ax.set_xticks(range(len(sites)), [_site_label(s, source) for s in sites], rotation=20, ha="right")
        ax.set(title=f"{title}: ROC AUC with 95% intervals (no bar: no interval, e.g. one patient group)",
               xlabel="test site / domain", ylabel="ROC AUC")
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), title="method",
                  title_fontsize="small")
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_reliability(metrics: Mapping, path: epath.PathLike) -> epath.Path:
    """Reliability diagrams: observed positive rate vs mean predicted P(y=1) per bin, one panel per method.

    Marker area grows with the bin's example count; each site's ECE is in its legend entry.
    """
    methods = {n: m.get("reliability", {}) for n, m in metrics["methods"].items()}
    ncols = min(3, len(methods))
    nrows = math.ceil(len(methods) / ncols)
    fig = Figure(figsize=(4.8 * ncols, 4.6 * nrows), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    sites, source = list(metrics["sites"]), metrics["source_site"]
    for ax, (name, curves) in zip(axes, methods.items()):
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect calibration")
        for i, site in enumerate(sites):
            c = curves.get(site)
            if not c:
                continue
            pts = [(p, f, n) for p, f, n in zip(c["mean_predicted"], c["fraction_positive"], c["count"]) if p is not None]
            if not pts:
                continue
            px, fy, count = (np.array(v) for v in zip(*pts))
            ece = metrics["methods"][name]["per_site"][site].get("ece")
            label = _site_label(site, source) + ("" if ece is None else f", ECE {ece:.2f}")
            colour = f"C{i % 10}"
            ax.plot(px, fy, color=colour, linewidth=1, alpha=0.6)
            ax.scatter(px, fy, s=6 + 60 * np.sqrt(count / count.max()), color=colour, label=label,
                       marker=_MARKERS[i % len(_MARKERS)], alpha=0.85, linewidths=0)
        ax.set(title=f"{name}: reliability of the probe", xlabel="mean predicted P(y = 1) in bin",
               ylabel="observed fraction of label 1 in bin", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
        ax.legend(fontsize="x-small", loc="upper left", markerscale=0.8)
    for ax in axes[len(methods):]:
        ax.set_visible(False)
    return _save(fig, path)


def plot_signatures(metrics: Mapping, path: epath.PathLike) -> epath.Path:
    """Sparse-signature size (share of dimensions selected) and fold-to-fold Jaccard overlap per method."""
    names = list(metrics["methods"])
    sig = [metrics["methods"][n].get("signature", {}) for n in names]
    share = [s["size"] / s["num_dims"] if s.get("size") is not None else np.nan for s in sig]
    jac = [s["fold_jaccard"] if s.get("fold_jaccard") is not None else np.nan for s in sig]
    fig = Figure(figsize=(max(8.0, 1.1 * len(names) + 4), 4.2), dpi=DPI, layout="constrained")
    ax_size, ax_jac = fig.subplots(1, 2)
    xs = np.arange(len(names))
    colours = [f"C{j % 10}" for j in range(len(names))]
    bars = ax_size.bar(xs, np.nan_to_num(share), color=colours)
    for bar, s in zip(bars, sig):
        if s.get("size") is not None:
            ax_size.annotate(f"{s['size']}/{s['num_dims']}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                             ha="center", va="bottom", fontsize="small")
    ax_jac.bar(xs, np.nan_to_num(jac), color=colours)
    for ax, title, ylabel in ((ax_size, "Signature size (L1 probe, λ by grouped CV)", "share of dimensions selected"),
                              (ax_jac, "Signature stability across CV folds", "mean pairwise Jaccard")):
        ax.set_xticks(xs, names, rotation=25, ha="right")
        ax.set(title=title, xlabel="method", ylabel=ylabel, ylim=(0, 1.05))
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
