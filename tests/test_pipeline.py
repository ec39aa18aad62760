"""Tests for lmc_jax.evaluate.pipeline: features functions in, every site scored and the report written."""

import numpy as np
import pytest

from lmc_jax.evaluate import pipeline
from lmc_jax.methods import RAW_COLOUR, raw_colour_features, with_transforms
from tests.conftest import TINY_BUILDER
from tests.tiny_config import tiny_config


def _mean_colour(tiles: np.ndarray) -> np.ndarray:
    """A stand-in encoder: per-channel mean and the mean over channels, float32 (B, 4)."""
    means = tiles.astype(np.float32).mean(axis=(1, 2))
    return np.concatenate([means, means.mean(axis=1, keepdims=True)], axis=1)


def _invert(images: np.ndarray) -> np.ndarray:
    """A stand-in stain normaliser: colour inversion (uint8 → uint8, same shape)."""
    return 255 - images


def test_evaluate_features_with_a_transform_writes_the_report(tiny_data_dir, tmp_path):
    config = tiny_config()
    config.data.data_dir = str(tiny_data_dir)
    config.data.builder_config = TINY_BUILDER
    features = with_transforms({"enc": _mean_colour, RAW_COLOUR: raw_colour_features(config)}, {"invert": _invert},
                               ["enc"])
    provenance = {"enc": {"run": "nowhere", "step": 3, "weights": "raw"}}
    metrics, paths = pipeline.evaluate_features(config, features, tmp_path / "eval", provenance=provenance)
    assert list(metrics["methods"]) == ["enc", RAW_COLOUR, "invert+enc"]
    assert metrics["encoders"] == provenance  # methods without provenance are left out, none invented
    assert metrics["sites"][-1] == "ihc" and metrics["summary_excludes"] == ["ihc"]
    enc, inverted = metrics["methods"]["enc"], metrics["methods"]["invert+enc"]
    # inversion is an affine map of this encoder's features: the probe ranks the same, distances scale-free
    assert inverted["per_site"]["scanner_tone"]["fd"] == pytest.approx(enc["per_site"]["scanner_tone"]["fd"], rel=1e-3)
    assert enc["signature"]["grouped"] and enc["probe"]["validation"] == "group-disjoint"
    assert {"metrics", "report", "html", "embeddings", "auc", "reliability", "signatures"} <= set(paths)
    assert "nowhere" in paths["report"].read_text()
