"""Python API: load a trained encoder (a training workdir, an export directory or timm weights) and embed tiles.

```python
import glob, lmc_jax
from PIL import Image
encoder = lmc_jax.load("runs/default")  # a training workdir, an export directory or "timm:/path/model.safetensors"
tiles = [Image.open(path) for path in sorted(glob.glob("tiles/*.png"))]
features = encoder.embed(tiles)  # float32 [len(tiles), encoder.dim]: evaluation's features of these tiles
normalized = lmc_jax.stain.get_normalizer("reinhard").fit(tiles[0]).transform(tiles)  # uint8, colours of tiles[0]
```

`embed` takes uint8 arrays [N, H, W, 3] (or [H, W, 3]) or a list of PIL images and prepares them as
evaluation does: the central `crop_size` square (the crop the model was trained on) of each image; an image
smaller than that is first enlarged (bicubic) until its shorter side fits, and `resize=True` shrinks larger ones
the same way instead of cropping their centre. A workdir is loaded with `lmc_jax.runs.load_run` (EMA weights
when the run kept them), so the API, evaluation, export and `mode=embed` give the same features.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from flax import nnx
from PIL import Image

from lmc_jax import parallel, runs
from lmc_jax.errors import UserError
from lmc_jax.evaluate.embed import Features, encoder_features
from lmc_jax.evaluate.extra_encoders import timm_model_config
from lmc_jax.export.load import INIT_FROM_PREFIX, PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES, load_timm_weights, \
    read_hub_config
from lmc_jax.models.vit import build_model, parse_variant
from lmc_jax.stain import as_uint8_images

EXPORT_WEIGHTS = "model.safetensors"  # the weights file of an export directory (mode=export writes it)
DEFAULT_TIMM_SIZE = 224  # input edge of timm weights that declare none


def resolve(source: str) -> tuple[str, pathlib.Path]:
    """("workdir", run directory) or ("timm", weights file) for a checkpoint spec; UserError naming it otherwise."""
    text = str(source)
    if text.startswith(INIT_FROM_PREFIX):
        path = pathlib.Path(text[len(INIT_FROM_PREFIX):]).expanduser()
        path = path / EXPORT_WEIGHTS if path.is_dir() else path
        if not path.is_file():
            raise UserError(f"checkpoint {text!r}: no weights file {path}; give timm:/path/model.safetensors "
                            "(or a .bin/.pth state dict)")
        return "timm", path
    path = pathlib.Path(text).expanduser()
    if path.is_file() and path.suffix.lower() in SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES:
        return "timm", path
    if not path.exists():
        raise UserError(f"checkpoint {text!r} does not exist: give a training workdir, an export directory or "
                        "timm:/path/model.safetensors")
    if ((path / runs.CONFIG).is_file() and (path / runs.CHECKPOINTS).is_dir()) or (
            path.name == runs.CHECKPOINTS and (path.parent / runs.CONFIG).is_file()):
        return "workdir", path
    if (path / EXPORT_WEIGHTS).is_file():
        return "timm", path / EXPORT_WEIGHTS
    raise UserError(f"checkpoint {text!r} is neither a training workdir (config.json and checkpoints/) nor an "
                    f"export directory ({EXPORT_WEIGHTS} and config.json); for timm weights write timm:/path/file")


def prepare(images: Any, crop_size: int, resize: bool = False) -> np.ndarray:
    """uint8 [N, crop_size, crop_size, 3]: the central crop of each image, as evaluation takes it (see module doc).

    Images smaller than the crop (or, with `resize`, of another size) are scaled with PIL's bicubic filter so
    their shorter side is `crop_size`, keeping the aspect ratio, before the crop.
    """
    whole = isinstance(images, np.ndarray) and images.ndim == 4
    if whole and min(images.shape[1:3]) >= crop_size and not (resize and min(images.shape[1:3]) != crop_size):
        return _centre(as_uint8_images(images, "embed"), crop_size)
    images = list(images) if whole or isinstance(images, (list, tuple)) else [images]
    out = np.empty((len(images), crop_size, crop_size, 3), np.uint8)
    for index, image in enumerate(images):
        array = as_uint8_images(image, f"embed image {index}")[0]
        shorter = min(array.shape[:2])
        if shorter < crop_size or (resize and shorter != crop_size):
            height, width = (round(side * crop_size / shorter) for side in array.shape[:2])
            array = np.asarray(Image.fromarray(array).resize((max(width, crop_size), max(height, crop_size)),
                                                             Image.Resampling.BICUBIC))
        out[index] = _centre(array[None], crop_size)[0]
    return out


def _centre(images: np.ndarray, crop_size: int) -> np.ndarray:
    """The central crop_size² window of uint8 [N, H, W, 3], at the offsets `stain.augment.center_crop` uses."""
    top, left = (images.shape[1] - crop_size) // 2, (images.shape[2] - crop_size) // 2
    return np.ascontiguousarray(images[:, top : top + crop_size, left : left + crop_size])


@dataclasses.dataclass(frozen=True)
class Encoder:
    """A loaded encoder: `embed(images)` → float32 [N, dim]; `config` is the run's config (timm/export weights:
    the `model` block and `data.crop_size` they were read with); `provenance` names run, step and weights."""

    config: ml_collections.ConfigDict
    dim: int
    crop_size: int
    provenance: dict
    batch_size: int  # tiles per jitted call (a multiple of the devices); the last batch is padded
    features: Features  # uint8 [N, crop, crop, 3] → float32 [N, dim], sharded over the mesh's devices

    def embed(self, images: Any, resize: bool = False) -> np.ndarray:
        """float32 [N, dim] embeddings of uint8 images [N, H, W, 3] / [H, W, 3] or a list of PIL images."""
        tiles = prepare(images, self.crop_size, resize)
        if len(tiles) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self.features(tiles)


def _timm_encoder(weights: pathlib.Path, mesh: jax.sharding.Mesh, batch_size: int, crop_size: int,
                  variant: str) -> Encoder:
    """timm ViT weights (an export directory's included) as an Encoder; the export's run/step/weights when known."""
    declared = read_hub_config(weights)
    if not declared and not variant:
        raise UserError(f"{weights}: no config.json beside it says the architecture; pass variant='S/16' (or "
                        "whichever ViT the weights are)")
    fallback = ml_collections.ConfigDict(dict(variant=variant or "S/16", pool="cls", dtype="float32", remat=False,
                                              projector_dims=(8,)))
    model = timm_model_config(weights, fallback)
    if variant:
        model.variant = variant
    declared_size = (declared.get("model_args") or {}).get("img_size") or \
        ((declared.get("pretrained_cfg") or {}).get("input_size") or [DEFAULT_TIMM_SIZE])[-1]
    _, patch = parse_variant(model.variant)
    crop = (crop_size or int(declared_size)) // patch * patch
    if crop == 0:
        raise UserError(f"{weights}: crop size {crop_size} is smaller than the patch size {patch}")
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: build_model(model, crop, seed=0)), nnx.Param)
    params = {name: jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), tree)
              for name, tree in nnx.to_pure_dict(abstract).items()}  # only the encoder is ever applied
    params["encoder"] = load_timm_weights(weights, model, crop)
    params = jax.device_put(params, parallel.replicated(mesh))
    lmc = declared.get("lmc_jax") or {}
    provenance = {"run": lmc.get("checkpoint"), "step": lmc.get("step"),
                  "weights": lmc.get("weights", f"timm:{weights}"), "source": f"timm:{weights}",
                  "architecture": f"ViT-{model.variant}"}
    config = ml_collections.ConfigDict({"model": model.to_dict(), "data": {"crop_size": crop}})
    return Encoder(config, parse_variant(model.variant)[0].width, crop, provenance, batch_size,
                   encoder_features(graphdef, params, crop, mesh, batch_size))


def load(source: str | epath.PathLike, *, step: int = -1, use_ema: bool = True, batch_size: int = 64,
         crop_size: int = 0, variant: str = "", devices: list | None = None) -> Encoder:
    """The encoder at `source`: a training workdir (checkpoint `step`, -1 the newest; EMA weights with `use_ema`
    when kept), an export directory, or `timm:/path/model.safetensors` (architecture from the config.json
    beside it, else `variant`; input edge `crop_size`, else the declared one). Runs on `devices` (default: this
    process's), `batch_size` rounded up to a multiple of them. UserError names a source that cannot be read.
    """
    mesh = parallel.make_mesh(-1, 1, devices=jax.local_devices() if devices is None else devices)
    batch = -(-max(batch_size, 1) // mesh.size) * mesh.size
    kind, path = resolve(str(source))
    try:
        if kind == "timm":
            return _timm_encoder(path, mesh, batch, crop_size, variant)
        run = runs.load_run(path, step, use_ema, mesh)
    except UserError:
        raise
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"checkpoint {str(source)!r} cannot be read ({type(error).__name__}: {error}); point at a "
                        "trained workdir, an export directory or timm:/path/model.safetensors") from error
    provenance = {**run.provenance(), "source": str(source), "architecture": f"ViT-{run.config.model.variant}"}
    width = parse_variant(run.config.model.variant)[0].width
    return Encoder(run.config, width, run.crop_size, provenance, batch,
                   encoder_features(run.graphdef, run.params, run.crop_size, mesh, batch))
