"""`mode=lomo`: the second paper's leave-one-magnification-out study (configs/breakhis_lomo.py,
configs/magnification_embedded.py).

For each held-out site (magnification) m of config.lomo.held_out (() = every site), every model of
config.lomo.models is trained in WORKDIR/fold_<m>/<model> on the train split's tiles of the OTHER sites, minus the
validation patients (`input_pipeline.validation_regions`, config.data.val_region_fraction), and scored on the
test split's tiles at m (the builder's test patients: no patient trains, validates and tests). With
config.lomo.paired (a data set that sees every location at every site, as cmu_magnification does), the test
patients' tiles at the other sites form the gallery of the label-free cross-magnification retrieval. Patients' roles:
fit (train split, not validation) → training and probes; validation (train split, those regions, other sites) →
model selection (the checkpoint of best validation AUC among config.lomo.candidates saved ones), the F1 threshold
and the domain probe; test (test split, site m) → every reported metric. `lmc_jax.evaluate.lomo` turns the
per-fold predictions and frozen embeddings into WORKDIR/lomo.{json,md,png}.

The models (`MODELS`, one entry each): the supervised baseline, the same with class-conditional DCGAN samples
mixed in (a generator trained per fold on the fit tiles, `lmc_jax.dcgan`), the domain-general model (supervised +
a K-way gradient-reversal head on the site), LMC (+ scale views) with a linear probe on frozen features, LMC
fine-tuned end to end with labels, the untrained encoder and the raw-colour-statistics probe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from data_pipelines import input_pipeline
from lmc_jax import configlib, dcgan, finetune, modes, runs, train
from lmc_jax.config_edit import with_values
from lmc_jax.errors import ConfigError, require
from lmc_jax.evaluate import lomo
from lmc_jax.evaluate.embed import colour_statistics, encoder_features, run_features
from lmc_jax.evaluate.kernels import probe
from lmc_jax.objectives import dann

Data = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Fold:
    """One held-out site: the fold's training config and its rows (fit / val from the train split, test)."""

    held_out: str
    directory: epath.Path
    config: ml_collections.ConfigDict  # the base config restricted to the fold's source sites
    fit: Data
    val: Data
    test: Data
    mesh: jax.sharding.Mesh
    gallery: Data | None = None  # paired data sets: the test patients' tiles at the source sites (+ "location",
    #                              "site_name")


@dataclasses.dataclass(frozen=True)
class Scored:
    """What a model gives the report for one fold: P(y = 1) and embeddings of each role, and how it was chosen."""

    p_val: np.ndarray
    p_test: np.ndarray
    x_fit: np.ndarray
    x_val: np.ndarray
    x_test: np.ndarray
    selected: dict
    domain_head_accuracy: float | None = None
    x_gallery: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class LomoModel:
    """One row of the LOMO table: how its training config derives from the fold's, and how it is scored."""

    description: str
    score: Callable[[Fold, str, ml_collections.ConfigDict], Scored]  # (fold, name, config) → Scored


def _supervised(config: ml_collections.ConfigDict, **changes) -> ml_collections.ConfigDict:
    """The supervised baseline's training config: one geometric view per tile, cross-entropy on the labels."""
    return with_values(config, {"objectives": ("supervised",), "lmc.num_views": 1, "lmc.stain_views": False,
                                **changes})


def _candidates(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checkpoints every num_steps / lomo.candidates steps, all kept: the candidates of model selection."""
    count = config.lomo.candidates
    return with_values(config, {"checkpoint.every_steps": max(1, config.num_steps // count),
                                "checkpoint.max_to_keep": count + 1})


@contextlib.contextmanager
def _timed(fold: Fold, what: str) -> Iterator[None]:
    """Logs "fold <m>, <what> in <s> s" when the block ends: where a study's minutes go."""
    started = time.perf_counter()
    yield
    logging.info("fold %s, %s in %.0f s", fold.held_out, what, time.perf_counter() - started)


def _train(fold: Fold, name: str, config: ml_collections.ConfigDict) -> epath.Path:
    directory = fold.directory / name
    with _timed(fold, f"{name}: trained"):
        train.train(_candidates(config), directory, fold.mesh)
    return directory


Features = Callable[[np.ndarray], np.ndarray]


def _embed_roles(features: Features, fold: Fold) -> tuple[np.ndarray, ...]:
    return tuple(features(part["image"]) for part in (fold.fit, fold.val, fold.test))


def _with_gallery(scored: Scored, features: Features, fold: Fold) -> Scored:
    """`scored` with the gallery's embeddings (paired data sets only): scored once, for the selected model."""
    if fold.gallery is None:
        return scored
    return dataclasses.replace(scored, x_gallery=features(fold.gallery["image"]))


Candidate = tuple[float, Callable[[], tuple[Scored, Features]]]
"""A checkpoint's validation AUC and how to score it in full (called for the selected checkpoint only)."""


def _best(fold: Fold, directory: epath.Path, score_run: Callable[[runs.Run], Candidate]) -> Scored:
    """The saved checkpoint whose validation AUC is highest (the earliest on ties), scored."""
    checkpoints = sorted(int(p.name) for p in (directory / runs.CHECKPOINTS).iterdir() if p.name.isdigit())
    finish, best_auc, history = None, -np.inf, []
    with _timed(fold, f"{directory.name}: {len(checkpoints)} candidates scored"):
        for step in checkpoints:
            run = runs.load_run(directory, step=step, use_ema=fold.config.eval.use_ema, mesh=fold.mesh)
            val_auc, complete = score_run(run)
            history.append([step, val_auc])
            if val_auc > best_auc:
                finish, best_auc = complete, val_auc
        best, features = finish()
        best = _with_gallery(best, features, fold)
    return dataclasses.replace(best, selected={**best.selected, "candidates": history})


def _val_auc(y: np.ndarray, p: np.ndarray) -> float:
    value = lomo.auc(y, p)
    return float(value) if value is not None else -np.inf


def _head_scores(fold: Fold, name: str, config: ml_collections.ConfigDict) -> Scored:
    """A supervised model: its own classifier's P(y = 1); the domain head's validation accuracy when it has one."""
    directory = _train(fold, name, config)

    def score_run(run: runs.Run) -> Candidate:  # selection needs the validation rows only
        features = run_features(run, fold.config, fold.mesh)
        model = nnx.merge(run.graphdef, jax.device_get(run.params))
        proba = lambda x: np.asarray(jax.nn.softmax(model.classifier(jnp.asarray(x)))[:, 1])  # noqa: E731
        x_val = features(fold.val["image"])
        p_val = proba(x_val)

        def complete() -> tuple[Scored, Features]:
            x_fit, x_test = features(fold.fit["image"]), features(fold.test["image"])
            head = None
            if hasattr(model, "domain_head") and run.config.dann.domain_field:
                logits = model.domain_head(dann.head_inputs(jnp.asarray(x_val)))  # z-scored as in training
                predicted = np.asarray(jnp.argmax(logits, axis=-1))
                head = float(np.mean(predicted == fold.val["site"]))
            return Scored(p_val, proba(x_test), x_fit, x_val, x_test, {"step": run.step, "weights": run.weights},
                          head), features

        return _val_auc(fold.val["label"], p_val), complete

    return _best(fold, directory, score_run)


def _probed(fold: Fold, features: Features, selected: dict) -> Scored:
    """A logistic probe fitted on `features` of the fit rows, scored on the validation and test rows."""
    x_fit, x_val, x_test = _embed_roles(features, fold)
    fitted = probe.fit_logistic(x_fit, fold.fit["label"], fold.config.eval.probe_l2)
    p_val, p_test = (np.asarray(probe.predict_proba(fitted, x)) for x in (x_val, x_test))
    return Scored(p_val, p_test, x_fit, x_val, x_test, selected)


def _probe_scores(fold: Fold, name: str, config: ml_collections.ConfigDict) -> Scored:
    """An encoder trained without labels: a logistic probe on its frozen features of the fit rows."""
    directory = _train(fold, name, config)

    def score_run(run: runs.Run) -> Candidate:  # the probe needs the fit rows of every candidate
        features = run_features(run, fold.config, fold.mesh)
        scored = _probed(fold, features, {"step": run.step, "weights": run.weights})
        return _val_auc(fold.val["label"], scored.p_val), lambda: (scored, features)

    return _best(fold, directory, score_run)


def _untrained_scores(fold: Fold, name: str, config: ml_collections.ConfigDict) -> Scored:
    """The LMC architecture at initialisation (config.seed) + a linear probe: what training adds is measured
    against it, the cross-magnification retrieval above all."""
    graphdef, params = runs.initial_params(config, fold.mesh)
    features = encoder_features(graphdef, params, config.data.crop_size, fold.mesh, config.eval.batch_size)
    scored = _probed(fold, features, {"step": 0, "weights": f"initialisation (seed {config.seed})"})
    return _with_gallery(scored, features, fold)


def _finetune_scores(fold: Fold, name: str, config: ml_collections.ConfigDict) -> Scored:
    """LMC's encoder (the fold's `lmc` run, trained first when absent) + a linear head fine-tuned on the fit rows'
    labels, the candidate of best validation accuracy kept (lmc_jax/finetune.py)."""
    base = fold.directory / "lmc"
    if not (base / runs.CHECKPOINTS).is_dir():
        _train(fold, "lmc", config)
    run = runs.load_run(base, use_ema=config.eval.use_ema, mesh=fold.mesh)
    encoder_def, encoder_params = nnx.split(nnx.merge(run.graphdef, run.params).encoder)
    lomo_cfg = config.lomo
    with _timed(fold, f"{name}: fine-tuned"):
        tuned = finetune.finetune(encoder_def, encoder_params, run.crop_size, fold.fit, fold.val,
                                  num_steps=lomo_cfg.finetune_steps, batch_size=config.batch_size,
                                  learning_rate=lomo_cfg.finetune_learning_rate,
                                  weight_decay=config.optimizer.weight_decay,
                                  eval_every=max(1, lomo_cfg.finetune_steps // lomo_cfg.candidates),
                                  eval_batch_size=config.eval.batch_size, seed=config.seed)
    batch = config.eval.batch_size
    features = lambda images: tuned.features(images, batch)  # noqa: E731
    x_fit, x_val, x_test = _embed_roles(features, fold)
    scored = Scored(tuned.proba(fold.val["image"], batch), tuned.proba(fold.test["image"], batch), x_fit, x_val,
                    x_test, {"from": str(base), "from_step": run.step, "finetune_step": tuned.selected_step,
                             "candidates": [list(c) for c in tuned.history]})
    return _with_gallery(scored, features, fold)


def _dcgan_scores(fold: Fold, name: str, config: ml_collections.ConfigDict) -> Scored:
    """The baseline with DCGAN samples: a class-conditional generator trained on the fold's fit tiles first."""
    stage = fold.directory / f"{name}_generator"
    features = None
    if (fold.directory / "baseline" / runs.CHECKPOINTS).is_dir():  # FD of samples on the baseline's encoder
        run = runs.load_run(fold.directory / "baseline", use_ema=config.eval.use_ema, mesh=fold.mesh)
        features = run_features(run, fold.config, fold.mesh)
    with _timed(fold, f"{name}: generator trained"):
        bank = dcgan.run(config, fold.fit["image"], fold.fit["label"], config.supervised.num_classes, stage,
                         config.seed, features_fn=features)
    return _head_scores(fold, name, _supervised(config, **{"dcgan.ratio": config.lomo.dcgan_ratio,
                                                          "dcgan.bank_path": str(bank)}))


def _colour_scores(fold: Fold, name: str, config: ml_collections.ConfigDict) -> Scored:
    """A logistic probe on per-channel colour mean and std of the centre crop: no encoder."""
    crop = config.data.crop_size
    features = lambda images: colour_statistics(images, crop)  # noqa: E731
    return _with_gallery(_probed(fold, features, {"weights": "none (colour statistics)"}), features, fold)


MODELS: dict[str, LomoModel] = {
    "baseline": LomoModel("supervised ViT: cross-entropy on the labels, geometric augmentation",
                          lambda fold, name, config: _head_scores(fold, name, _supervised(config))),
    "dcgan": LomoModel("the baseline with class-conditional DCGAN samples mixed in (config.lomo.dcgan_ratio)",
                       _dcgan_scores),
    "domain_general": LomoModel(
        "the baseline + a gradient-reversal head that must not name the tile's magnification (K-way DANN)",
        lambda fold, name, config: _head_scores(fold, name, _supervised(
            config, objectives=("supervised", "dann"), **{"dann.domain_field": "site"}))),
    "lmc": LomoModel("LMC (stain views, no labels) + a linear probe on frozen features",
                     lambda fold, name, config: _probe_scores(fold, name, config)),
    "lmc_scale": LomoModel("LMC with stain and scale (magnification) views + a linear probe",
                           lambda fold, name, config: _probe_scores(fold, name,
                                                                    with_values(config, {"lmc.scale.views": True}))),
    "lmc_finetune": LomoModel("LMC pre-training, then encoder + linear head fine-tuned on the labels",
                              _finetune_scores),
    "untrained": LomoModel("the LMC architecture at initialisation + a linear probe (what training adds)",
                           _untrained_scores),
    "raw_colour_stats": LomoModel("a probe on per-channel colour mean and std (no encoder)", _colour_scores),
}


def validate(config: ml_collections.ConfigDict) -> None:
    """The training checks of configlib, then config.lomo's own."""
    configlib.validate(with_values(config, {"mode": "train"}))
    c = config.lomo
    unknown = sorted(set(c.models) - set(MODELS))
    require(len(c.models) > 0 and not unknown, "lomo.models", tuple(c.models),
            f"name one or more of {list(MODELS)}" + (f" (unknown: {unknown})" if unknown else ""), error=ConfigError)
    require(config.data.val_region_fraction > 0, "data.val_region_fraction", config.data.val_region_fraction,
            "LOMO selects models on source validation patients: use e.g. 0.2", error=ConfigError)
    require(c.candidates >= 1, "lomo.candidates", c.candidates, "must be ≥ 1 (checkpoints compared on validation)",
            error=ConfigError)
    require(0 < c.dcgan_ratio < 1, "lomo.dcgan_ratio", c.dcgan_ratio, "must be in (0, 1)", error=ConfigError)
    require(c.finetune_steps >= 1 and c.finetune_learning_rate > 0, "lomo.finetune_steps",
            (c.finetune_steps, c.finetune_learning_rate), "need ≥ 1 step and a learning rate > 0", error=ConfigError)
    require(bool(c.test_split) and c.test_split != "train", "lomo.test_split", c.test_split,
            "name the split of the test patients (not 'train')", error=ConfigError)


def _rows(data: Data, mask: np.ndarray) -> Data:
    return {key: value[mask] for key, value in data.items()}


def folds(config: ml_collections.ConfigDict, workdir: epath.Path, mesh: jax.sharding.Mesh) -> list[Fold]:
    """The folds of config.lomo.held_out (() = every site), each with its patient-disjoint rows."""
    data_dir = config.data.data_dir
    names = input_pipeline.site_names(config, data_dir, "train")
    held = tuple(config.lomo.held_out) or tuple(names)
    unknown = sorted(set(held) - set(names))
    require(not unknown, "lomo.held_out", held, f"unknown sites {unknown}; the data set's sites are {names}",
            error=ConfigError)
    train_data = input_pipeline.load_split(config, data_dir, "train")
    test_data = input_pipeline.load_split(config, data_dir, config.lomo.test_split)
    shared = sorted(set(train_data["region"].tolist()) & set(test_data["region"].tolist()))
    if shared:
        raise ConfigError(f"the train and {config.lomo.test_split!r} splits share patients {shared[:5]}: LOMO needs "
                          "patient-disjoint splits; rebuild the data set (its builder splits by patient).")
    held_regions = input_pipeline.validation_regions(train_data["region"], train_data["label"],
                                                     config.data.val_region_fraction, config.seed)
    is_val = np.isin(train_data["region"], held_regions)
    labelled_train, labelled_test = train_data["label"] >= 0, test_data["label"] >= 0  # -1: unlabelled, not scored
    if config.lomo.paired:
        test_data = {**test_data, "location": locations(test_data, len(names)),
                     "site_name": np.asarray(names)[test_data["site"]]}
    out = []
    for site in held:
        index = names.index(site)
        fold_config = with_values(config, {"data.train_sites": tuple(n for n in names if n != site),
                                           "dann.num_domains": len(names)})
        source = (train_data["site"] != index) & labelled_train
        gallery = _rows(test_data, test_data["site"] != index) if config.lomo.paired else None
        out.append(Fold(site, workdir / f"fold_{site}", fold_config, _rows(train_data, source & ~is_val),
                        _rows(train_data, source & is_val),
                        _rows(test_data, (test_data["site"] == index) & labelled_test), mesh, gallery))
    return out


def locations(data: Data, num_sites: int) -> np.ndarray:
    """Location ids of a paired data set's rows: tile_id // num_sites (each location stored once per site,
    site-minor, tile_id = location · num_sites + site); ConfigError when the rows are not laid out so."""
    tile_id = np.asarray(data["tile_id"], np.int64)
    if not np.array_equal(tile_id % num_sites, np.asarray(data["site"])):
        raise ConfigError(f"config.lomo.paired=True needs every location stored once per site with tile_id = "
                          f"location · {num_sites} + site (as cmu_magnification does); this data set's tile_id and "
                          "site disagree: set config.lomo.paired=False (BreaKHis images are not paired).")
    return tile_id // num_sites


def run(config: ml_collections.ConfigDict, workdir: epath.Path | None) -> dict:
    """Trains and scores every model on every fold, then writes WORKDIR/lomo.{json,md,png}."""
    mesh = modes.start(config, workdir, "one folder per fold (each model's run), lomo.json/md/png go there")
    input_pipeline.ensure_built(config)
    inputs: dict[str, list[lomo.FoldInputs]] = {name: [] for name in config.lomo.models}
    selected: dict[str, dict] = {name: {} for name in config.lomo.models}
    for fold in folds(config, workdir, mesh):
        logging.info("fold %s: %d fit, %d validation, %d test tiles", fold.held_out, len(fold.fit["label"]),
                     len(fold.val["label"]), len(fold.test["label"]))
        with _timed(fold, "every model done"):
            for name in config.lomo.models:
                scored = MODELS[name].score(fold, name, fold.config)
                selected[name][fold.held_out] = scored.selected
                inputs[name].append(lomo.FoldInputs(
                    held_out=fold.held_out, y=fold.test["label"], p=scored.p_test, patients=fold.test["region"],
                    y_val=fold.val["label"], p_val=scored.p_val, patients_val=fold.val["region"],
                    x_test=scored.x_test, x_val=scored.x_val, x_fit=scored.x_fit, y_fit=fold.fit["label"],
                    patients_fit=fold.fit["region"], d_fit=fold.fit["site"], d_val=fold.val["site"],
                    domain_head_accuracy=scored.domain_head_accuracy,
                    **({} if fold.gallery is None else dict(
                        loc_test=fold.test["location"], x_gallery=scored.x_gallery,
                        loc_gallery=fold.gallery["location"], d_gallery=fold.gallery["site_name"]))))
    settings = lomo.LomoSettings(replicates=config.eval.bootstrap_replicates, num_bins=config.eval.ece_bins,
                                 tolerance=config.lomo.signature_tolerance, l2=config.eval.probe_l2,
                                 seed=config.seed)
    results = lomo.evaluate(inputs, settings)
    results["selected"] = selected
    results["descriptions"] = {name: MODELS[name].description for name in config.lomo.models}
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        lomo.write_report(results, workdir)
        print(lomo.render_markdown(results))
    return results
