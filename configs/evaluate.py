"""Evaluate a trained run: every encoder of the run, baselines, all domain-generalisation metrics and the report.

The training config (configs/default.py) with mode = "evaluate" and every evaluation knob spelled
out: evaluation rebuilds the model from it, so model/data keys must match the run being evaluated
(override them on the command line as you did for training). Writes WORKDIR/eval/: metrics.json
(schema 2: method × site × metric with 95% intervals), report.md, report.html (figures embedded)
and embeddings.png, auc.png, reliability.png, signatures.png. On the embedded data set with the
default model this takes 1-2 minutes on a 2-core CPU.

    python -m lmc_jax.main --config configs/evaluate.py --config.eval.checkpoint=runs/default \\
        --config.data.name=cmu_small_region --workdir runs/default_eval
"""

import importlib.util
import os

import ml_collections

_DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py")


def _training_config() -> ml_collections.ConfigDict:
    """configs/default.py's config, loaded from beside this file."""
    spec = importlib.util.spec_from_file_location("lmc_default_config", _DEFAULT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config() -> ml_collections.ConfigDict:
    """The training config, switched to evaluation, with every config.eval knob."""
    config = _training_config()
    config.mode = "evaluate"
    ev = config.eval
    ev.checkpoint = ""  # REQUIRED: the workdir (or its checkpoints dir) of the trained run

    # More rows of the methods table: another training run, or timm ViT weights (architecture from the
    # timm config.json beside them, else config.model), e.g.
    #   --config.eval.extra_encoders="('baseline=runs/other', 'uni=timm:/weights/uni/model.safetensors')"
    ev.extra_encoders = ()

    # Which tiles play which role: TFDS splits of config.data.name (the embedded set's by default; for
    # Camelyon17-WILDS: source_split="train", heldout_splits=("id_val", "val", "test"), source_site="")
    ev.source_split = "train"
    ev.heldout_splits = ("heldout", "ihc")
    ev.source_site = "source"  # "" = the most frequent site of source_split
    ev.summary_exclude = ("ihc",)
    ev.source_only = False  # True: fit on the source site's tiles only (e.g. one MIDOG scanner of its train split)
    ev.max_split_tiles = 0  # 0 = every tile of each split

    # Which sites count and how small a site may be
    ev.min_site_samples = 10  # a site with fewer held-out examples gets undefined distances and probe metrics

    # Separation from the source site (embeddings z-scored with the source's statistics)
    ev.num_projections = 256  # sliced-W2 random directions
    ev.mmd_max_samples = 2000  # per site: random subsample for the quadratic-time unbiased MMD²

    # Batch mixing, as scib-metrics defines it (sites jointly, stratified subsample)
    ev.integration_max_samples = 10_000  # cells in the joint kNN graph (exact kNN is quadratic)
    ev.lisi_neighbors = 90  # k of iLISI (scib default; perplexity k // 3)
    ev.kbet_neighbors = 50  # k of kBET (scib default)
    ev.kbet_alpha = 0.05  # kBET χ² test level

    # Linear probe (L2 logistic regression) and calibration
    ev.probe_l2 = 1e-2
    ev.probe_val_fraction = 0.2  # whole groups of the source train set kept aside to pick the F1 threshold
    ev.ece_bins = 15

    # Point detection scored as MIDOG scores mitotic figures (label-1 tiles are the objects; tile coordinates
    # and image ids come from the data set): per site F1/precision/recall of probe detections matched within
    # this radius in px. 0 = off; 30.0 for MIDOG at 0.25 µm/px (7.5 µm)
    ev.detection_radius = 0.0

    # Bootstrap intervals (95%)
    ev.bootstrap_replicates = 200  # 0 disables intervals
    ev.bootstrap_blocks = 100  # at most this many resampling units per draw (units merged at random above)
    ev.bootstrap_unit = "group"  # group (patient/region, paired across sites) | example

    # Transfer protocols with patient-disjoint folds
    ev.protocols = ("cross_site", "leave_one_domain_out")
    ev.protocol_folds = 5

    # Sparse signatures (L1 logistic path, λ by grouped CV)
    ev.signature_folds = 5  # 0 skips signatures
    ev.signature_lambdas = 20  # λ_max down to λ_max / 100
    ev.signature_stability_rounds = 20  # half-sample refits for selection frequencies; 0 disables
    return config
