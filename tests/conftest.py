"""Shared pytest setup: absl flags parsed (grain workers need it), CPU only."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

import pathlib  # noqa: E402

import pytest  # noqa: E402

TINY_BUILDER = "crop32"


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> pathlib.Path:
    """cmu_small_region built from a 384 × 512 px crop of the slide with 32-px tiles (about a second)."""
    from data_pipelines.builders.cmu_small_region import CmuSmallRegionConfig, build_dataset

    path = tmp_path_factory.mktemp("tiny_tfds")
    build_dataset(
        path,
        config=CmuSmallRegionConfig(name=TINY_BUILDER, tile_size=32, train_stride=16, region_size=128,
                                    crop=(1280, 640, 384, 512)),
    )
    return path


@pytest.fixture(scope="session")
def timm():
    """The timm module (through torch_compat, which copes with torchvision's ops); skips without the test extra."""
    from lmc_jax.export.torch_compat import import_timm  # pylint: disable=import-outside-toplevel

    try:
        return import_timm()
    except ImportError as error:
        pytest.skip(f"torch/timm not installed (the test extra): {error}")
