"""Evaluate a trained run: every method of its table, the baselines, all domain-generalisation metrics, the report.

configs/default.py with mode = "evaluate"; every config.eval knob keeps its default there. Each model
is rebuilt from its own run's config.json (model, crop, objective and seed need not be repeated); the
command line gives the data to evaluate on (config.data.*), the evaluation knobs and the mesh. Writes
WORKDIR/eval/: metrics.json (schema 2: method × site × metric with 95% intervals, plus "encoders": which
run, step and weights each row scored), report.md, report.html (figures embedded) and embeddings.png,
auc.png, reliability.png, signatures.png. On the embedded data set with the default model this takes
1-2 minutes on a 2-core CPU.

    python -m lmc_jax.main --config configs/evaluate.py --config.eval.checkpoint=runs/default \\
        --workdir runs/default_eval

Other data sets: name their splits and sites, e.g. Camelyon17-WILDS
    --config.data.name=camelyon17_wilds --config.data.tile_size=96 \\
    --config.eval.heldout_splits="('id_val', 'val', 'test')" --config.eval.source_site=center_0
More rows: --config.eval.extra_encoders="('baseline=runs/other', 'uni=timm:/weights/uni/model.safetensors')"
"""

import importlib.util
import os

import ml_collections

_DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py")


def get_config() -> ml_collections.ConfigDict:
    """configs/default.py's config, switched to evaluation."""
    spec = importlib.util.spec_from_file_location("lmc_default_config", _DEFAULT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.mode = "evaluate"  # config.eval.checkpoint (REQUIRED): the workdir of the trained run
    return config
