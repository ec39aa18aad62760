"""Walking-skeleton evaluation: per method and site, separation from the source site and linear-probe AUC.

Numbers in (embeddings already computed), a JSON-serialisable metrics dict out; no model code here.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import jax
import numpy as np

from lmc_jax.evaluate import probe, separation

SCHEMA_VERSION = 1

NOTES = {
    "fd": "Fréchet distance ‖μ1−μ2‖²+Tr(Σ1+Σ2−2(Σ1Σ2)^½) between Gaussian fits of the source and the site's "
    "held-out embeddings, both z-scored with the source held-out statistics (= squared W2 of the Gaussian fits), "
    "divided by the embedding width D = the source's own total variance after z-scoring, so encoders of different "
    "width and scale are comparable. Lower = closer to the source = more invariant.",
    "fd_raw": "The same Fréchet distance on the raw embeddings; depends on the encoder's scale, not comparable across methods.",
    "fd_class": "Class-conditional FD: mean over labels of the standardised FD / D between same-label source and site embeddings "
    "(separates stain shift from label-mix shift).",
    "sliced_w2": "Sliced 2-Wasserstein distance (not squared) between the standardised SAMPLES of source and site, "
    "exact 1-D W2 along random unit directions, root-mean-square over directions; no Gaussian assumption.",
    "top1": "Fraction of the site's tiles whose nearest source-site embedding (cosine, standardised) is the same tile.",
    "auc": "ROC AUC of a logistic probe (L2, fit on the source train embeddings) on the site's held-out examples; "
    "near 0.5 means the label is lost, which also exposes a collapsed encoder that small FD would flatter.",
    "auc_drop": "source_auc − mean_unseen_auc.",
    "n": "Number of held-out examples at the site.",
}

_DISTANCES = ("fd", "fd_raw", "fd_class", "sliced_w2", "top1")


@dataclass(frozen=True)
class MethodEmbeddings:
    """One method's embeddings: source-site train set for the probe, held-out set over all sites."""

    train: np.ndarray  # (N_tr, D) source site, train regions
    train_labels: np.ndarray  # (N_tr,) in {0, 1}
    heldout: np.ndarray  # (M, D) all sites, held-out regions
    heldout_labels: np.ndarray  # (M,) in {0, 1}
    heldout_sites: np.ndarray  # (M,) int index into site_names
    heldout_tile_ids: np.ndarray | None = None  # (M,) same id = same tissue tile rendered at different sites


def _validate(name: str, m: MethodEmbeddings, num_sites: int) -> None:
    """Raise ValueError naming the method and field for wrong shapes, NaN/inf, or out-of-range site ids."""
    arrays = {"train": m.train, "heldout": m.heldout}
    for field, a in arrays.items():
        a = np.asarray(a)
        if a.ndim != 2:
            raise ValueError(f"method {name!r}: {field} must be (N, D); got shape {a.shape}.")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"method {name!r}: {field} embeddings contain NaN or inf; check the encoder/checkpoint.")
    if np.shape(m.train)[1] != np.shape(m.heldout)[1]:
        raise ValueError(f"method {name!r}: train dim {np.shape(m.train)[1]} != heldout dim {np.shape(m.heldout)[1]}.")
    per_row = {"train_labels": (m.train_labels, len(m.train)), "heldout_labels": (m.heldout_labels, len(m.heldout)),
               "heldout_sites": (m.heldout_sites, len(m.heldout))}
    if m.heldout_tile_ids is not None:
        per_row["heldout_tile_ids"] = (m.heldout_tile_ids, len(m.heldout))
    for field, (a, n) in per_row.items():
        if np.shape(a) != (n,):
            raise ValueError(f"method {name!r}: {field} must have shape ({n},); got {np.shape(a)}.")
    for field in ("train_labels", "heldout_labels"):
        values = np.unique(np.asarray(getattr(m, field))).tolist()
        if not set(values) <= {0, 1}:
            raise ValueError(f"method {name!r}: {field} must be binary 0/1 proxy labels; got classes {values}.")
    sites = np.asarray(m.heldout_sites)
    if sites.size and (sites.min() < 0 or sites.max() >= num_sites):
        raise ValueError(f"method {name!r}: heldout_sites must index site_names (0..{num_sites - 1}); "
                         f"got range {sites.min()}..{sites.max()}.")


def _class_fd(src: np.ndarray, src_y: np.ndarray, tgt: np.ndarray, tgt_y: np.ndarray, min_n: int) -> float | str:
    """Mean over the source's labels of standardised FD between same-label sets, or the reason it is undefined."""
    values = []
    for c in np.unique(src_y):
        n_src, n_tgt = int(np.sum(src_y == c)), int(np.sum(tgt_y == c))
        if min(n_src, n_tgt) < min_n:
            return f"label {c}: {n_src} source / {n_tgt} site examples (< min_site_samples={min_n})"
        values.append(float(separation.frechet_distance(src[src_y == c], tgt[tgt_y == c])) / src.shape[1])
    return float(np.mean(values))


def _top1(z: np.ndarray, ids: np.ndarray | None, src: np.ndarray, tgt: np.ndarray) -> float | str:
    """Same-tile retrieval against the source site, or the reason it is undefined."""
    if ids is None:
        return "no heldout_tile_ids given"
    query = tgt & np.isin(ids, ids[src])
    if not query.any():
        return "no tile of this site also occurs at the source site"
    return float(separation.matched_top1(z[query], ids[query], z[src], ids[src]))


def _site_distances(m: MethodEmbeddings, z: np.ndarray, src: np.ndarray, tgt: np.ndarray, key: jax.Array,
                    num_projections: int, min_n: int) -> dict[str, float | str]:
    """Distances of one target site from the source site: value, or reason string when undefined."""
    raw = np.asarray(m.heldout)
    labels = np.asarray(m.heldout_labels)
    ids = None if m.heldout_tile_ids is None else np.asarray(m.heldout_tile_ids)
    return {
        "fd": float(separation.frechet_distance(z[src], z[tgt])) / z.shape[1],
        "fd_raw": float(separation.frechet_distance(raw[src], raw[tgt])),
        "fd_class": _class_fd(z[src], labels[src], z[tgt], labels[tgt], min_n),
        "sliced_w2": float(separation.sliced_wasserstein(z[src], z[tgt], key, num_projections)),
        "top1": _top1(z, ids, src, tgt),
    }


def _probe_scores(m: MethodEmbeddings, l2: float) -> np.ndarray | str:
    """Probe P(y=1) on every held-out row, or the reason no probe can be fit."""
    labels = np.unique(np.asarray(m.train_labels))
    if labels.tolist() != [0, 1]:
        return f"probe not fit: train labels are {labels.tolist()}, need both 0 and 1"
    params = probe.fit_logistic(m.train, m.train_labels, l2)
    return np.asarray(probe.predict_proba(params, m.heldout))


def _split(values: Mapping[str, float | str | probe.Undefined]) -> tuple[dict, dict]:
    """Split metric → value-or-reason into JSON numbers (None when undefined) and a reasons dict."""
    numbers, reasons = {}, {}
    for k, v in values.items():
        if isinstance(v, probe.Undefined):
            v = v.reason
        if isinstance(v, str):
            numbers[k], reasons[k] = None, v
        else:
            numbers[k] = float(v)
    return numbers, reasons


def _per_site(m: MethodEmbeddings, site_names: Sequence[str], source_id: int, key: jax.Array,
              num_projections: int, min_n: int, l2: float) -> dict[str, dict]:
    """Metrics for every site: distances from the source (undefined at the source itself) and probe AUC."""
    sites = np.asarray(m.heldout_sites)
    src = sites == source_id
    n_src = int(src.sum())
    z = np.asarray(separation.standardize(m.heldout, np.asarray(m.heldout)[src])) if n_src >= min_n else None
    scores = _probe_scores(m, l2)
    out = {}
    for i, site in enumerate(site_names):
        tgt = sites == i
        n = int(tgt.sum())
        too_few = f"{n} held-out examples (< min_site_samples={min_n})" if n < min_n else None
        if i == source_id:
            values = dict.fromkeys(_DISTANCES, "reference site (its distance to itself is 0 by definition)")
        elif z is None:
            values = dict.fromkeys(_DISTANCES, f"source site has {n_src} held-out examples (< min_site_samples={min_n})")
        elif too_few:
            values = dict.fromkeys(_DISTANCES, too_few)
        else:
            values = _site_distances(m, z, src, tgt, key, num_projections, min_n)
        if isinstance(scores, str) or too_few:
            values["auc"] = scores if isinstance(scores, str) else too_few
        else:
            values["auc"] = probe.roc_auc(np.asarray(m.heldout_labels)[tgt], scores[tgt])
        numbers, reasons = _split(values)
        out[site] = {**numbers, "n": n, "undefined": reasons}
    return out


def _mean_over(per_site: dict[str, dict], sites: Sequence[str], metric: str) -> float | str:
    """Mean of `metric` over `sites` where it is defined, or the reason none is."""
    values = [per_site[s][metric] for s in sites if per_site[s][metric] is not None]
    if not values:
        return f"undefined at every unseen site ({', '.join(sites) or 'there are none'})"
    return float(np.mean(values))


def _summary(per_site: dict[str, dict], source_site: str, exclude: Sequence[str]) -> dict:
    """Means over unseen sites (less `exclude`), source AUC and the AUC drop, with reasons and partial-coverage notes."""
    unseen = [s for s in per_site if s != source_site and s not in exclude]
    values: dict[str, float | str] = {f"mean_unseen_{k}": _mean_over(per_site, unseen, k) for k in (*_DISTANCES, "auc")}
    src_auc = per_site[source_site]["auc"]
    values["source_auc"] = src_auc if src_auc is not None else per_site[source_site]["undefined"]["auc"]
    if isinstance(values["source_auc"], float) and isinstance(values["mean_unseen_auc"], float):
        values["auc_drop"] = values["source_auc"] - values["mean_unseen_auc"]
    else:
        values["auc_drop"] = "source_auc or mean_unseen_auc is undefined"
    numbers, reasons = _split(values)
    partial = {}
    for k in (*_DISTANCES, "auc"):
        missing = [s for s in unseen if per_site[s][k] is None]
        if missing and len(missing) < len(unseen):
            partial[f"mean_unseen_{k}"] = f"mean over {len(unseen) - len(missing)} of {len(unseen)} unseen sites; " \
                                          f"undefined at {', '.join(missing)}"
    return {**numbers, "undefined": reasons, "partial": partial}


def evaluate_embeddings(
    methods: Mapping[str, MethodEmbeddings],
    *,
    site_names: Sequence[str],
    source_site: str,
    key: jax.Array,
    min_site_samples: int = 10,
    num_projections: int = 256,
    l2: float = 1e-2,
    summary_exclude: Sequence[str] = (),
) -> dict:
    """Separation (FD, class FD, sliced W2, same-tile top-1) of every site from the source, and probe AUC per site.

    Held-out embeddings are z-scored with the source site's held-out statistics; the probe is fit on the
    method's `train` set with L2 strength `l2` (see `probe.fit_logistic`). A metric that cannot be computed
    (site below `min_site_samples`, one class, the source itself) is None with its reason under "undefined",
    never NaN. Sliced W2 uses the same `key` (same directions) for every site. NaN/inf embeddings raise.
    Sites in `summary_exclude` are reported per site but left out of the unseen-site means (e.g. a split
    cut from different tissue, whose distance mixes biology with stain).
    """
    site_names = list(site_names)
    if source_site not in site_names:
        raise ValueError(f"source_site {source_site!r} is not in site_names {site_names}.")
    if len(set(site_names)) != len(site_names):
        raise ValueError(f"site_names must be unique; got {site_names}.")
    for name, m in methods.items():
        _validate(name, m, len(site_names))
    source_id = site_names.index(source_site)
    result = {}
    for name, m in methods.items():
        per_site = _per_site(m, site_names, source_id, key, num_projections, min_site_samples, l2)
        result[name] = {"per_site": per_site, "summary": _summary(per_site, source_site, summary_exclude)}
    return {"schema_version": SCHEMA_VERSION, "source_site": source_site, "sites": site_names,
            "min_site_samples": min_site_samples,
            "summary_excludes": list(summary_exclude), "methods": result, "notes": dict(NOTES)}
