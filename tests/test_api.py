"""Python API: `lmc_jax.load` of a workdir, an export and timm weights gives evaluation's features; the example
in the docs runs; `lmc_jax.stain.get_normalizer` equals the registry's normaliser; `import lmc_jax` is light."""

import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

import lmc_jax
from configs.export import get_config as export_config
from data_pipelines.tiling import locate_cmu_slide, read_slide_region
from lmc_jax import api, parallel, runs
from lmc_jax.errors import UserError
from lmc_jax.evaluate.embed import run_features
from lmc_jax.modes import export as export_mode
from lmc_jax.stain import normalizers
from tests.tiny_config import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def make_run(workdir: pathlib.Path, seed: int = 0) -> pathlib.Path:
    """A training workdir of tiny_config() holding random weights (runs.write_random_run: no training, seconds)."""
    return pathlib.Path(runs.write_random_run(workdir, tiny_config(), seed=seed, scale=0.2))


def slide_tiles(count: int, size: int) -> np.ndarray:
    """`count` tissue tiles of `size` px from the embedded H&E slide."""
    region = read_slide_region(locate_cmu_slide())[832:1088, 1088:1280]
    corners = [(y, x) for y in range(0, 256 - size + 1, size) for x in range(0, 192 - size + 1, size)]
    return np.stack([region[y : y + size, x : x + size] for y, x in corners[:count]])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> pathlib.Path:
    return make_run(tmp_path_factory.mktemp("api_run"))


@pytest.fixture(scope="module")
def encoder(workdir) -> api.Encoder:
    return lmc_jax.load(workdir, batch_size=8)


def test_embed_equals_evaluation_features_of_the_same_tiles(workdir, encoder):
    tiles = slide_tiles(20, 32)  # evaluation's tiles: 32 px, centre-cropped to the run's 24 px
    config = tiny_config()
    run = runs.load_run(workdir)
    mesh = parallel.make_mesh(1, 1, devices=jax.local_devices()[:1])
    evaluation = run_features(run, config, mesh)(tiles)
    np.testing.assert_allclose(encoder.embed(tiles), evaluation, atol=1e-6)
    np.testing.assert_allclose(encoder.embed([Image.fromarray(tile) for tile in tiles]), evaluation, atol=1e-6)
    np.testing.assert_allclose(encoder.embed(tiles[3]), evaluation[3:4], atol=1e-6)  # one [H, W, 3] image
    assert encoder.dim == 32 and encoder.crop_size == 24 and encoder.config.model.variant == "mu/8"
    assert encoder.provenance["run"] == str(workdir) and encoder.provenance["step"] == 1
    assert encoder.provenance["weights"] == "raw" and np.std(evaluation, axis=0).mean() > 1e-3  # not constant


def test_small_images_are_enlarged_and_resize_shrinks_large_ones(encoder):
    large = slide_tiles(4, 48)
    small = np.stack([np.asarray(Image.fromarray(tile).resize((24, 24), Image.Resampling.BICUBIC)) for tile in large])
    np.testing.assert_allclose(encoder.embed(large, resize=True), encoder.embed(small), atol=1e-6)
    assert not np.allclose(encoder.embed(large), encoder.embed(small), atol=1e-3)  # default: the central crop
    enlarged = api.prepare(np.zeros((2, 12, 30, 3), np.uint8), 24)
    assert enlarged.shape == (2, 24, 24, 3)
    assert encoder.embed(np.zeros((0, 32, 32, 3), np.uint8)).shape == (0, 32)
    with pytest.raises(ValueError, match="uint8"):
        encoder.embed(np.zeros((2, 32, 32, 3), np.float32))


def test_export_directory_and_timm_weights_load_to_the_same_features(workdir, encoder, tmp_path):
    export = tmp_path / "export"
    export_mode.run(ml_collections.ConfigDict(dict(export_config().to_dict(), checkpoint=str(workdir),
                                                   output=str(export), verify=False)), None)
    tiles = slide_tiles(6, 32)
    ours = encoder.embed(tiles)
    exported = lmc_jax.load(export)
    assert exported.crop_size == 24 and exported.dim == 32
    assert exported.provenance["run"] == str(workdir) and exported.provenance["step"] == 1
    np.testing.assert_allclose(exported.embed(tiles), ours, atol=1e-5)
    assert api.resolve(f"timm:{export}") == api.resolve(f"timm:{export / 'model.safetensors'}") == (
        "timm", export / "model.safetensors")


def example_code() -> str:
    """The README's first ```python block after '## Python API' when the README has that section, else the
    one in lmc_jax.api's docstring: the documented example, so it cannot drift from what is tested."""
    readme = (REPO / "README.md").read_text() if (REPO / "README.md").is_file() else ""
    section = readme.split("## Python API", 1)[1] if "## Python API" in readme else api.__doc__
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_documented_example_runs(workdir, tmp_path, monkeypatch):
    code = example_code()
    assert "lmc_jax.load(" in code and ".embed(" in code and "get_normalizer(" in code
    (tmp_path / "tiles").mkdir()
    tiles = slide_tiles(8, 24)  # the shapes every normaliser test uses: one compile of fit and transform per session
    for index, tile in enumerate(tiles):
        Image.fromarray(tile).save(tmp_path / "tiles" / f"tile{index}.png")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code.replace('"runs/default"', repr(str(workdir))), "example", "exec"), namespace)
    assert namespace["features"].shape == (8, namespace["encoder"].dim)
    assert namespace["normalized"].dtype == np.uint8 and namespace["normalized"].shape == tiles.shape


def test_stain_normalizer_api_equals_the_registry_function():
    tiles = slide_tiles(8, 24)  # the example's shapes: its compiled fit and transform are reused
    reference = slide_tiles(12, 24)[-1]
    normalizer = lmc_jax.stain.get_normalizer("reinhard").fit(reference)
    out = normalizer.transform(tiles)
    assert out.dtype == np.uint8 and out.shape == tiles.shape
    np.testing.assert_array_equal(out, normalizers.fit_transform_fn("reinhard", reference)(tiles))
    assert not np.array_equal(out, tiles) and (normalizer.last_flags == 0).all()
    with pytest.raises(ValueError, match="call fit"):
        lmc_jax.stain.get_normalizer("macenko").transform(tiles)
    with pytest.raises(UserError, match="unknown stain normaliser"):
        lmc_jax.stain.get_normalizer("nope")


def test_bad_sources_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        lmc_jax.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither a training workdir"):
        lmc_jax.load(tmp_path / "empty")
    with pytest.raises(UserError, match="no weights file"):
        lmc_jax.load(f"timm:{tmp_path / 'none.safetensors'}")
    broken = tmp_path / "broken"
    (broken / runs.CHECKPOINTS).mkdir(parents=True)
    (broken / runs.CONFIG).write_text("{not json")
    with pytest.raises(UserError, match="cannot be read"):
        lmc_jax.load(broken)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a readable safetensors"):
        lmc_jax.load(f"timm:{tmp_path / 'model.safetensors'}", variant="mu/8")
    with pytest.raises(UserError, match="pass variant="):
        lmc_jax.load(f"timm:{tmp_path / 'model.safetensors'}")


def test_import_lmc_jax_does_not_import_jax():
    code = ("import sys, lmc_jax, lmc_jax.stain; assert 'jax' not in sys.modules, 'jax imported'; "
            "assert callable(lmc_jax.stain.get_normalizer); print(json.dumps(sorted(lmc_jax.__all__)))")
    result = subprocess.run([sys.executable, "-c", "import json; " + code], cwd=REPO, capture_output=True, text=True,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"), check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["Encoder", "load", "stain"]
