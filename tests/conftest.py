"""Shared pytest setup: absl flags parsed (grain workers need it), CPU only, one XLA compilation cache per session."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# JAX's persistent compilation cache in a folder of this session: a program compiled once (the tiny train step, the
# evaluation's kernels, the normalisers) is read back, not compiled again, by later tests, the other xdist worker
# and the CLI subprocesses of the preemption / multiprocess tests (they inherit the environment). The session
# starts empty (CI's clean clone pays each first compile) and the folder is removed at exit by the process that
# made it: pytest's main process, which sets the variable before it starts the workers.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="lmc_jax_tests_xla_cache_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # every program, not only those over 1 s
# XLA:CPU with LLVM's cheap pipeline: the suite's programs are small and most run a few times, so the tests wait on
# compiles, not on runs (25% less wall time measured on test_train + test_dcgan). Set in the environment, so the
# subprocesses (CLI runs, tests/multi*_check.py, which append their device count) compile the same way.
_CHEAP_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_CHEAP_COMPILE}".strip()

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
