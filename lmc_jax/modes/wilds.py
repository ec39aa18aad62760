"""`mode=wilds`: Camelyon17-WILDS in the WILDS leaderboard's format (configs/camelyon17_wilds.py).

Per seed of config.wilds.seeds: LMC pre-trained on the official `train` split (hospitals 0, 3, 4) in
WORKDIR/seed_<s>, then two heads on it, each scored by accuracy at P ≥ 0.5 on `id_val` (hospitals 0, 3, 4), `val`
(OOD hospital 1) and `test` (OOD hospital 2):

- a linear (logistic) probe fitted on the train split's embeddings, the encoder frozen;
- the encoder and a linear head fine-tuned end to end with cross-entropy on the train split's labels
  (lmc_jax/finetune.py), the checkpoint kept by accuracy on config.wilds.finetune_select_split, `val` (OOD
  hospital 1) by default: WILDS' official Camelyon17 leaderboard selects models (hyperparameters and early
  stopping) on the OOD validation set (Koh et al. 2021; the `wilds` package's examples/train.py keeps the best
  model by the `val` split's `acc_avg`), the ID validation set being reported only.

Writes WORKDIR/leaderboard.json and leaderboard.md: a row per head, mean ± sample std over the seeds, with ERM's
published test accuracy beside them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from data_pipelines import input_pipeline
from lmc_jax import configlib, finetune, modes, runs, train
from lmc_jax.config_edit import with_values
from lmc_jax.errors import ConfigError, require
from lmc_jax.evaluate.embed import run_features
from lmc_jax.evaluate.kernels import probe

# Koh et al., "WILDS: A Benchmark of in-the-Wild Distribution Shifts" (ICML 2021), Camelyon17-WILDS, ERM
# (DenseNet-121 from scratch), average test accuracy over 10 seeds, mean (std): 70.3 (6.4).
ERM_PUBLISHED = {"method": "ERM (WILDS, published)", "test": (70.3, 6.4), "seeds": 10}
SPLIT_NAMES = {"id_val": "ID val (hospitals 0/3/4)", "val": "OOD val (hospital 1)", "test": "test (hospital 2)"}


def accuracy(proba: np.ndarray, labels: np.ndarray) -> float:
    """Share (in %) of examples whose P(y = 1) ≥ 0.5 agrees with the label."""
    return float(100.0 * np.mean((np.asarray(proba) >= 0.5) == (np.asarray(labels) == 1)))


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """(mean, sample standard deviation with ddof = 1; None for a single value)."""
    values = np.asarray(values, np.float64)
    return float(values.mean()), (float(values.std(ddof=1)) if len(values) > 1 else None)


def validate(config: ml_collections.ConfigDict) -> None:
    """The training checks of configlib, then config.wilds's own."""
    configlib.validate(with_values(config, {"mode": "train"}))
    w = config.wilds
    require(len(w.seeds) > 0 and all(isinstance(s, int) for s in w.seeds), "wilds.seeds", tuple(w.seeds),
            "name one or more integer seeds", error=ConfigError)
    require(len(w.eval_splits) > 0, "wilds.eval_splits", tuple(w.eval_splits), "name the splits to score",
            error=ConfigError)
    require(w.finetune_steps >= 0, "wilds.finetune_steps", w.finetune_steps, "use 0 (no fine-tuning) or more steps",
            error=ConfigError)
    for key in ("finetune_batch_size", "finetune_eval_every", "finetune_learning_rate"):
        require(w[key] > 0, f"wilds.{key}", w[key], "must be positive", error=ConfigError)
    require(w.finetune_weight_decay >= 0, "wilds.finetune_weight_decay", w.finetune_weight_decay,
            "must be ≥ 0", error=ConfigError)
    require(w.finetune_select_split not in ("train", w.probe_split), "wilds.finetune_select_split",
            w.finetune_select_split, "select on a held-out split: 'val' (OOD hospital 1, WILDS' choice) or 'id_val'",
            error=ConfigError)


def _load(config: ml_collections.ConfigDict, split: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A split in memory, a random subset of at most config.eval.max_split_tiles records (0 = all)."""
    size = input_pipeline.split_size(config, config.data.data_dir, split)
    limit = config.eval.max_split_tiles
    indices = np.sort(rng.choice(size, limit, replace=False)) if limit and size > limit else None
    return input_pipeline.load_split(config, config.data.data_dir, split, indices)


def probe_accuracies(config: ml_collections.ConfigDict, features, data: dict[str, dict]) -> dict[str, float]:
    """Accuracy (%) of a logistic probe fitted on data[config.wilds.probe_split], on each evaluation split."""
    w = config.wilds
    fitted = probe.fit_logistic(features(data[w.probe_split]["image"]), data[w.probe_split]["label"],
                                config.eval.probe_l2)
    return {split: accuracy(probe.predict_proba(fitted, features(data[split]["image"])), data[split]["label"])
            for split in w.eval_splits}


def finetune_accuracies(config: ml_collections.ConfigDict, run: runs.Run, data: dict[str, dict],
                        seed: int) -> dict:
    """The run's encoder + a linear head fine-tuned on data[config.wilds.probe_split] (lmc_jax/finetune.py), the
    candidate of best accuracy on data[config.wilds.finetune_select_split] kept: its accuracy (%) on each
    evaluation split, the step selected and every candidate's (step, selection accuracy)."""
    w = config.wilds
    encoder_def, encoder_params = nnx.split(nnx.merge(run.graphdef, run.params).encoder)
    tuned = finetune.finetune(encoder_def, encoder_params, run.crop_size, data[w.probe_split],
                              data[w.finetune_select_split], num_steps=w.finetune_steps,
                              batch_size=w.finetune_batch_size, learning_rate=w.finetune_learning_rate,
                              weight_decay=w.finetune_weight_decay, eval_every=w.finetune_eval_every,
                              eval_batch_size=config.eval.batch_size, seed=seed)
    return {"accuracy": {split: accuracy(tuned.proba(data[split]["image"], config.eval.batch_size),
                                         data[split]["label"]) for split in w.eval_splits},
            "selected_step": tuned.selected_step,
            "selection": [[step, acc] for step, acc in tuned.history]}


def leaderboard_row(method: str, per_seed: dict, splits: Sequence[str]) -> dict:
    """A leaderboard row: per split (mean, sample std) over the seeds' accuracies {seed: {split: acc}}."""
    return {"method": method, "seeds": len(per_seed),
            **{s: mean_std([acc[s] for acc in per_seed.values()]) for s in splits}}


def markdown(board: dict) -> str:
    """The leaderboard table: one row per method, accuracy mean ± std per split, the seed count."""
    splits = board["splits"]

    def cell(entry) -> str:
        if entry is None:
            return "—"
        mean, std = entry
        return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"

    lines = ["# Camelyon17-WILDS: accuracy (%), mean ± std over seeds", "",
             "| method | " + " | ".join(SPLIT_NAMES.get(s, s) for s in splits) + " | seeds |",
             "|" + " --- |" * (len(splits) + 2)]
    for row in board["rows"]:
        lines.append(f"| {row['method']} | " + " | ".join(cell(row.get(s)) for s in splits) + f" | {row['seeds']} |")
    lines += ["", board["note"], ""]
    return "\n".join(lines)


def run(config: ml_collections.ConfigDict, workdir: epath.Path | None) -> dict:
    """Trains, probes and fine-tunes every seed, then writes the leaderboard."""
    mesh = modes.start(config, workdir, "one run per seed and leaderboard.json go there")
    input_pipeline.ensure_built(config)
    w = config.wilds
    data = {split: _load(config, split, np.random.default_rng(config.seed))
            for split in dict.fromkeys([w.probe_split, w.finetune_select_split, *w.eval_splits])}
    per_seed, tuned = {}, {}
    for seed in w.seeds:
        seed_dir = workdir / f"seed_{seed}"
        train.train(with_values(config, {"seed": seed}), seed_dir, mesh)
        run = runs.load_run(seed_dir, use_ema=config.eval.use_ema, mesh=mesh)
        per_seed[seed] = probe_accuracies(config, run_features(run, config, mesh), data)
        tuned[seed] = finetune_accuracies(config, run, data, seed)
        logging.info("seed %d: probe %s, fine-tuned %s (step %d)", seed, per_seed[seed], tuned[seed]["accuracy"],
                     tuned[seed]["selected_step"])
    board = {"splits": list(w.eval_splits), "per_seed": {str(k): v for k, v in per_seed.items()},
             "per_seed_finetuned": {str(k): v for k, v in tuned.items()},
             "rows": [leaderboard_row("LMC + linear probe (this run)", per_seed, w.eval_splits),
                      leaderboard_row("LMC + fine-tuned linear head (this run)",
                                      {k: v["accuracy"] for k, v in tuned.items()}, w.eval_splits),
                      ERM_PUBLISHED],
             "examples": {split: int(len(d["label"])) for split, d in data.items()},
             "note": ("Accuracy at P ≥ 0.5. Linear probe: logistic (L2 config.eval.probe_l2) fitted on the train "
                      "split (hospitals 0/3/4), encoder frozen. Fine-tuned: encoder + linear head trained with "
                      f"cross-entropy on the train split for {w.finetune_steps} steps, the checkpoint of best "
                      f"accuracy on {SPLIT_NAMES.get(w.finetune_select_split, w.finetune_select_split)} kept "
                      "(WILDS' model selection). std is the sample std (ddof 1) over seeds. ERM: Koh et al. 2021 "
                      "(WILDS), DenseNet-121 trained with labels, 10 seeds.")}
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "leaderboard.json").write_text(json.dumps(board, indent=2, allow_nan=False))
    (workdir / "leaderboard.md").write_text(markdown(board))
    if jax.process_index() == 0:
        print(markdown(board))
    return board
