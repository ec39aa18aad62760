"""Turn the evaluation suite's metrics dict into files: metrics.json, report.md (tables) and embeddings.png (PCA)."""

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

_SUMMARY_COLUMNS = (
    ("mean_unseen_fd", "mean unseen FD/D ↓"),
    ("mean_unseen_fd_class", "mean unseen class FD/D ↓"),
    ("mean_unseen_sliced_w2", "mean unseen sliced W2 ↓"),
    ("mean_unseen_top1", "mean unseen same-tile top-1 ↑"),
    ("source_auc", "source AUC ↑"),
    ("mean_unseen_auc", "mean unseen AUC ↑"),
    ("auc_drop", "AUC drop ↓"),
)

_SITE_TABLES = (
    ("fd", "Fréchet distance to the source site (source-standardised embeddings; lower = closer)"),
    ("fd_raw", "Fréchet distance on raw embeddings (scale-dependent; for reference only)"),
    ("sliced_w2", "Sliced 2-Wasserstein distance to the source site (standardised samples)"),
    ("top1", "Same-tile top-1 retrieval against the source site"),
    ("auc", "Linear-probe ROC AUC (probe fit on source-site train embeddings)"),
)

HOW_TO_READ = (
    "**How to read this.** Every distance compares a site's held-out embeddings with the source site's, after "
    "z-scoring all of them with the source site's held-out mean and std, so an encoder cannot look invariant by "
    "shrinking its outputs. Lower FD / sliced W2 = the site's embeddings sit closer to the source's = more "
    "stain/scanner invariant. FD is the squared 2-Wasserstein distance between Gaussian fits, divided by the "
    "embedding width D (the source's total variance after z-scoring) so encoders of any width compare; sliced W2 is a "
    "(non-squared) distance on the samples themselves, so the two are on different scales. A collapsed encoder "
    "also scores low distances: the probe AUC is the guard — invariance is only worth something while the AUC "
    "stays high at the source and drops little at unseen sites. n/a = undefined (reasons listed below)."
)


def _fmt(value: float | None) -> str:
    """Three significant digits; n/a for an undefined value."""
    return "n/a" if value is None else f"{value:#.3g}"


def _row(cells: list[str]) -> str:
    """One markdown table row."""
    return "| " + " | ".join(cells) + " |"


def _table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table with left-aligned first column and right-aligned numbers."""
    align = [":---"] + ["---:"] * (len(header) - 1)
    return "\n".join([_row(header), _row(align), *(_row(r) for r in rows)])


def _any_defined(metrics: Mapping, key: str, per_site: bool) -> bool:
    """Whether some method has `key` defined (at some site, or in the summary)."""
    for m in metrics["methods"].values():
        if per_site and any(s[key] is not None for s in m["per_site"].values()):
            return True
        if not per_site and m["summary"][key] is not None:
            return True
    return False


def format_table(metrics: Mapping) -> str:
    """Markdown summary table, one row per method (columns with no defined value anywhere are dropped)."""
    columns = [(k, title) for k, title in _SUMMARY_COLUMNS if _any_defined(metrics, k, per_site=False)]
    rows = [[name] + [_fmt(m["summary"][k]) for k, _ in columns] for name, m in metrics["methods"].items()]
    return _table(["method"] + [title for _, title in columns], rows)


def _site_table(metrics: Mapping, key: str) -> str:
    """Method × site markdown table of one per-site metric; the source column is marked."""
    source = metrics["source_site"]
    header = ["method"] + [f"{s} (source)" if s == source else s for s in metrics["sites"]]
    rows = [[name] + [_fmt(m["per_site"][s][key]) for s in metrics["sites"]] for name, m in metrics["methods"].items()]
    return _table(header, rows)


def _undefined_lines(metrics: Mapping) -> list[str]:
    """Bullet lines naming every undefined value (except the trivial source-to-itself distances) and partial means."""
    lines = []
    for name, m in metrics["methods"].items():
        for site, values in m["per_site"].items():
            for key, reason in values["undefined"].items():
                if not (site == metrics["source_site"] and key != "auc"):
                    lines.append(f"- {name} / {site} / {key}: {reason}")
        for key, reason in {**m["summary"]["undefined"], **m["summary"]["partial"]}.items():
            lines.append(f"- {name} / summary / {key}: {reason}")
    return lines


def render_markdown(metrics: Mapping) -> str:
    """The full report.md text: summary table, per-site tables, how-to-read, metric definitions, undefined values."""
    parts = [f"# Embedding evaluation (source site: {metrics['source_site']})", "", HOW_TO_READ, "",
             "## Summary", "", format_table(metrics), ""]
    for key, title in _SITE_TABLES:
        if _any_defined(metrics, key, per_site=True):
            parts += [f"## {title}", "", _site_table(metrics, key), ""]
    parts += ["## Definitions", ""] + [f"- **{k}**: {v}" for k, v in metrics["notes"].items()] + [""]
    undefined = _undefined_lines(metrics)
    if undefined:
        parts += ["## Undefined or partial values", ""] + undefined + [""]
    return "\n".join(parts)


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


def plot_projections(projections: Mapping[str, tuple[np.ndarray, np.ndarray]], site_names: list[str],
                     source_site: str, path: Path) -> Path:
    """One scatter panel per method of 2-D projected held-out embeddings coloured by site; saved as PNG."""
    ncols = min(3, len(projections))
    nrows = math.ceil(len(projections) / ncols)
    fig = Figure(figsize=(5.0 * ncols, 4.4 * nrows), dpi=120, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colours = [f"C{i % 10}" for i in range(len(site_names))]
    for ax, (name, (xy, sites)) in zip(axes, projections.items()):
        xy, sites = np.asarray(xy), np.asarray(sites)
        for i, site in enumerate(site_names):
            pts = xy[sites == i]
            if len(pts):
                label = f"{site} (source)" if site == source_site else site
                ax.scatter(pts[:, 0], pts[:, 1], s=9, alpha=0.6, color=colours[i], label=label, linewidths=0)
        ax.set(title=name, xlabel="PC 1", ylabel="PC 2")
        ax.legend(fontsize="small", markerscale=1.8, title="site", title_fontsize="small")
    for ax in axes[len(projections):]:
        ax.set_visible(False)
    fig.savefig(path)
    return path


def write_report(metrics: Mapping, out_dir: str | Path, *,
                 projections: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None) -> dict[str, Path]:
    """Write metrics.json, report.md and (when projections are given) embeddings.png into out_dir; return their paths.

    `projections` maps method name → (xy (M, 2), site ids (M,) indexing metrics["sites"]), e.g. from `pca_2d`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out / "metrics.json", "report": out / "report.md"}
    paths["metrics"].write_text(json.dumps(metrics, indent=2, ensure_ascii=False, allow_nan=False) + "\n", "utf-8")
    paths["report"].write_text(render_markdown(metrics), "utf-8")
    if projections:
        paths["embeddings"] = plot_projections(projections, list(metrics["sites"]), metrics["source_site"],
                                               out / "embeddings.png")
    return paths
