"""Write tests/golden/scib_metrics.npz: scib-metrics' iLISI/LISI, kBET and silhouette-batch on the deterministic
inputs of tests/test_integration.py, so that the test compares against them without scib-metrics installed.

Run once, from the repository root, in a venv that has scib-metrics (it is not in any extra):
    pip install scib-metrics==0.5.10 && python tests/golden/make_scib_golden.py
Rerun only when the test inputs (`_data`, the seeds, k) or the scib-metrics reference version change.
"""

import os
import pathlib
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import scib_metrics as scib  # noqa: E402
from scib_metrics.nearest_neighbors import NeighborsResults  # noqa: E402

from lmc_jax.evaluate.kernels import integration  # noqa: E402
from tests.test_integration import GOLDEN, ILISI_SEEDS, KBET_SEEDS, SILHOUETTE_SEEDS, _data, digest  # noqa: E402


def main() -> None:
    out: dict[str, np.ndarray] = {"scib_metrics_version": np.array(scib.__version__)}
    for seed in ILISI_SEEDS:
        x, _, batch = _data(seed)
        idx, dist = integration.knn(x, 90)
        graph = NeighborsResults(indices=idx, distances=dist)
        out[f"lisi_{seed}"] = np.asarray(scib.lisi_knn(graph, batch), np.float64)
        out[f"ilisi_{seed}"] = np.array(float(scib.ilisi_knn(graph, batch)))
        out[f"lisi_{seed}_inputs"] = np.array(digest(x, batch))
    for seed in KBET_SEEDS:
        x, _, batch = _data(seed, batch_shift=0.3)
        idx, dist = integration.knn(x, 50)
        acceptance, _, p_values = scib.kbet(NeighborsResults(indices=idx, distances=dist), batch, alpha=0.05)
        out[f"kbet_p_{seed}"] = np.asarray(p_values, np.float64)
        out[f"kbet_acceptance_{seed}"] = np.array(float(acceptance))
        out[f"kbet_{seed}_inputs"] = np.array(digest(x, batch))
    for seed in SILHOUETTE_SEEDS:
        x, labels, batch = _data(seed, n=400)
        out[f"silhouette_batch_{seed}"] = np.array(float(scib.silhouette_batch(x, labels, batch)))
        out[f"silhouette_batch_{seed}_inputs"] = np.array(digest(x, labels, batch))
    np.savez_compressed(GOLDEN, **out)
    print(f"wrote {GOLDEN.relative_to(ROOT)} ({GOLDEN.stat().st_size} bytes, scib-metrics {scib.__version__})")


if __name__ == "__main__":
    main()
