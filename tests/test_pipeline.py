"""Tests for lmc_jax.evaluate.pipeline: methods built from encoders and input transforms, end to end on tiny data."""

import numpy as np
import pytest

from lmc_jax.evaluate import pipeline
from tests.conftest import TINY_BUILDER
from tests.tiny_config import tiny_config


def _mean_colour(tiles: np.ndarray) -> np.ndarray:
    """A stand-in encoder: per-channel mean and the mean over channels, float32 (B, 4)."""
    means = tiles.astype(np.float32).mean(axis=(1, 2))
    return np.concatenate([means, means.mean(axis=1, keepdims=True)], axis=1)


def _invert(images: np.ndarray) -> np.ndarray:
    """A stand-in stain normaliser: colour inversion (uint8 → uint8, same shape)."""
    return 255 - images


@pytest.fixture(scope="module")
def config():
    config = tiny_config()
    config.eval.bootstrap_replicates = 50
    config.eval.protocol_folds = 3
    config.eval.signature_stability_rounds = 0
    return config


def test_a_transform_and_an_encoder_make_one_method(config):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    methods = pipeline.feature_functions(config, {"enc": _mean_colour, "other": _mean_colour},
                                         {"invert": _invert}, transform_encoders=["enc"])
    assert set(methods) == {"enc", "other", pipeline.RAW_COLOUR, "invert+enc"}
    np.testing.assert_allclose(methods["invert+enc"](images), 255.0 - methods["enc"](images), rtol=1e-6)
    every = pipeline.feature_functions(config, {"enc": _mean_colour, "other": _mean_colour}, {"invert": _invert})
    assert {"invert+enc", "invert+other"} <= set(every)


def test_bad_transforms_and_unknown_encoders_are_named(config):
    images = np.zeros((2, 32, 32, 3), np.uint8)
    broken = pipeline.feature_functions(config, {"enc": _mean_colour}, {"to_float": lambda im: im / 255.0})
    with pytest.raises(ValueError, match="input transform 'to_float' must map uint8"):
        broken["to_float+enc"](images)
    with pytest.raises(ValueError, match=r"transform_encoders names \['lmc'\]"):
        pipeline.feature_functions(config, {"enc": _mean_colour}, {"invert": _invert}, transform_encoders=["lmc"])


def test_evaluate_encoders_with_a_transform_writes_the_report(config, tiny_data_dir, tmp_path):
    config.data.data_dir = str(tiny_data_dir)
    config.data.builder_config = TINY_BUILDER
    metrics, paths = pipeline.evaluate_encoders(config, {"enc": _mean_colour}, tmp_path / "eval",
                                                input_transforms={"invert": _invert})
    assert set(metrics["methods"]) == {"enc", "invert+enc", pipeline.RAW_COLOUR}
    assert metrics["sites"][-1] == "ihc" and metrics["summary_excludes"] == ["ihc"]
    enc, inverted = metrics["methods"]["enc"], metrics["methods"]["invert+enc"]
    # inversion is an affine map of this encoder's features: the probe ranks the same, distances scale-free
    assert inverted["per_site"]["scanner_tone"]["fd"] == pytest.approx(enc["per_site"]["scanner_tone"]["fd"], rel=1e-3)
    assert enc["signature"]["grouped"] and enc["probe"]["validation"] == "group-disjoint"
    assert {"metrics", "report", "html", "embeddings", "auc", "reliability", "signatures"} <= set(paths)
