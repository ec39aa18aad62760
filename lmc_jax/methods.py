"""The methods the evaluation compares, each declared once: how its training config derives from the base
config (when it trains) and how its encoder, an uint8 images → embeddings function, is built.

The table of a run holds `lmc` (the run itself), the methods `config.eval.references` names, the extra
encoders `config.eval.extra_encoders` lists (other runs, timm weights), and each stain normaliser of
`config.eval.normalizers` in front of each encoder `config.eval.normalizer_encoders` names. Adding a
method is one `METHODS` entry (plus its own module when it has maths of its own).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import jax
import ml_collections
import numpy as np
from etils import epath

from lmc_jax import runs
from lmc_jax.config_edit import with_values
from lmc_jax.errors import UserError
from lmc_jax.evaluate import extra_encoders
from lmc_jax.evaluate.embed import Features, colour_statistics, encoder_features, run_features

Images = np.ndarray  # uint8 [N, H, W, 3]
LMC = "lmc"
RAW_COLOUR = "raw_colour_stats"
REFERENCES_DIR = "references"


@dataclasses.dataclass(frozen=True)
class Context:
    """What building a method's encoder may use: the evaluation config, the evaluated run, the mesh."""

    config: ml_collections.ConfigDict  # the evaluation config (data, eval, mesh keys)
    run: runs.Run  # the evaluated LMC run (its own config rebuilds every model derived from it)
    mesh: jax.sharding.Mesh


@dataclasses.dataclass(frozen=True)
class Method:
    """One row of the methods table."""

    description: str
    build: Callable[[Context, str], tuple[Features, dict]]  # (context, name) → (features, provenance)
    train_config: Callable[[ml_collections.ConfigDict], ml_collections.ConfigDict] | None = None  # None: not trained


def _derived(**changes) -> Callable[[ml_collections.ConfigDict], ml_collections.ConfigDict]:
    """base config → a copy with dotted keys changed, e.g. _derived(**{"lmc.stain_views": False})."""
    return lambda base: with_values(base, changes)


def workdir_of(workdir: epath.PathLike, name: str) -> epath.Path:
    """Where method `name` of the run at `workdir` trains: the workdir itself for lmc, else references/<name>."""
    workdir = epath.Path(workdir)
    return workdir if name == LMC else workdir / REFERENCES_DIR / name


def _trained(ctx: Context, name: str) -> tuple[Features, dict]:
    run = ctx.run if name == LMC else runs.load_run(workdir_of(ctx.run.directory, name),
                                                    use_ema=ctx.config.eval.use_ema, mesh=ctx.mesh)
    return run_features(run, ctx.config, ctx.mesh), run.provenance()


def _untrained(ctx: Context, name: str) -> tuple[Features, dict]:
    graphdef, params = runs.initial_params(ctx.run.config, ctx.mesh)
    features = encoder_features(graphdef, params, ctx.run.crop_size, ctx.mesh, ctx.config.eval.batch_size)
    return features, {"run": str(ctx.run.directory), "step": 0, "weights": f"initialisation (seed {ctx.run.config.seed})"}


def _raw_colour(ctx: Context, name: str) -> tuple[Features, dict]:
    return raw_colour_features(ctx.config), {"weights": "none (per-channel mean and std of the centre crop)"}


def raw_colour_features(config: ml_collections.ConfigDict) -> Features:
    """The raw-colour baseline: per-channel mean and std of the data.crop_size centre crop, [N, 6]."""
    return lambda images: colour_statistics(images, config.data.crop_size)


METHODS: dict[str, Method] = {
    LMC: Method("LMC: cross-correlation between stain views of each tile (the evaluated run)", _trained,
                train_config=_derived()),
    "untrained": Method("the LMC architecture at initialisation (same seed)", _untrained),
    "geometric_only": Method("the same Barlow-Twins training with geometric views only (no stain views)", _trained,
                             train_config=_derived(**{"lmc.stain_views": False})),
    "dann": Method("geometric_only plus a gradient-reversal domain head against stain renderings (DANN)", _trained,
                   train_config=_derived(**{"lmc.stain_views": False, "objectives": ("cross_correlation", "dann")})),
    RAW_COLOUR: Method("a probe on per-channel colour mean and std (no encoder)", _raw_colour),
}
REFERENCES = tuple(name for name in METHODS if name != LMC)
"""Names `config.eval.references` may list."""


def training_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """The config method `name` trains with, derived from the base (LMC's) config."""
    method = METHODS.get(name)
    if method is None or method.train_config is None:
        trained = [n for n, m in METHODS.items() if m.train_config is not None]
        raise UserError(f"{name!r} is not a trained method; choose one of {trained}")
    return method.train_config(config)


def trained_references(config: ml_collections.ConfigDict) -> list[str]:
    """The references of config.eval.references that train (in the run's references/ folder)."""
    return [name for name in config.eval.references if METHODS[name].train_config is not None]


def _normalised(transform: Callable[[Images], Images], features: Features, name: str) -> Features:
    """features ∘ transform, checking the transform keeps uint8 images of the same shape."""
    def apply(images: Images) -> np.ndarray:
        out = np.asarray(transform(images))
        if out.shape != images.shape or out.dtype != np.uint8:
            raise ValueError(f"input transform {name!r} must map uint8 {images.shape} to uint8 of the same shape; "
                             f"got {out.dtype} {out.shape}.")
        return features(out)
    return apply


def with_transforms(features: Mapping[str, Features], transforms: Mapping[str, Callable[[Images], Images]],
                    encoders: Sequence[str]) -> dict[str, Features]:
    """`features` plus each transform in front of each of `encoders`, named f"{transform}+{encoder}"."""
    unknown = sorted(set(encoders) - set(features))
    if unknown:
        raise UserError(f"config.eval.normalizer_encoders names {unknown}, which are not rows of the table "
                        f"{sorted(features)}.")
    out = dict(features)
    for t_name, transform in transforms.items():
        for e_name in encoders:
            out[f"{t_name}+{e_name}"] = _normalised(transform, features[e_name], t_name)
    return out


def table_features(config: ml_collections.ConfigDict, run: runs.Run,
                   mesh: jax.sharding.Mesh) -> tuple[dict[str, Features], dict[str, dict]]:
    """lmc, the references and the extra encoders as features functions, with each one's provenance."""
    ctx = Context(config, run, mesh)
    features, provenance = {}, {}
    for name in (LMC, *config.eval.references):
        features[name], provenance[name] = METHODS[name].build(ctx, name)
    for extra in extra_encoders.parse_specs(config, reserved=(*METHODS, *config.eval.normalizers)):
        features[extra.name], provenance[extra.name] = extra_encoders.load(extra, config, mesh)
    return features, provenance
