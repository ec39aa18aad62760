"""mode=lomo: patient-disjoint folds, and configs/breakhis_lomo.py end to end on a tiny BreaKHis replica."""

import json
import runpy

import numpy as np
import pytest
from etils import epath

from data_pipelines import input_pipeline
from data_pipelines.builders.breakhis import BreakhisConfig, build_dataset
from lmc_jax import parallel
from lmc_jax.errors import ConfigError
from lmc_jax.modes import lomo as lomo_mode
from tests.test_builder_breakhis import make_replica
from tests.tiny_config import tiny_config

TILE = 32


@pytest.fixture(scope="module")
def replica_data(tmp_path_factory):
    """The BreaKHis builder test's replica (7 patients × 4 magnifications × 2 images), each image fitted to 32 px."""
    parent = tmp_path_factory.mktemp("breakhis_files")
    make_replica(parent)
    data_dir = tmp_path_factory.mktemp("breakhis_tfds")
    build_dataset(data_dir, parent, config=BreakhisConfig(name="fit32", tile_size=TILE, mode="resize",
                                                          test_fraction=0.34))
    return data_dir


def _config(data_dir):
    config = runpy.run_path("configs/breakhis_lomo.py")["get_config"]()
    tiny = tiny_config()
    for key in ("model", "optimizer", "checkpoint"):
        config[key] = tiny[key]
    config.data.data_dir, config.data.builder_config = str(data_dir), "fit32"
    config.data.tile_size, config.data.crop_size = TILE, 24
    config.batch_size, config.num_steps, config.log_every_steps = 8, 2, 1
    config.optimizer.warmup_steps = 1
    config.eval.batch_size, config.eval.bootstrap_replicates = 32, 50
    config.dcgan.num_steps, config.dcgan.batch_size, config.dcgan.width, config.dcgan.bank_size = 2, 8, 8, 16
    config.lomo.candidates, config.lomo.finetune_steps = 2, 2
    return config


def test_folds_give_every_patient_one_role_and_hold_the_magnification_out(replica_data, tmp_path):
    config = _config(replica_data)
    folds = lomo_mode.folds(config, epath.Path(tmp_path), parallel.make_mesh())
    names = input_pipeline.site_names(config, replica_data, "train")
    assert [f.held_out for f in folds] == names == ["40X", "100X", "200X", "400X"]
    for fold in folds:
        fit, val, test = (set(part["region"].tolist()) for part in (fold.fit, fold.val, fold.test))
        assert fit and val and test and not (fit & val) and not (fit & test) and not (val & test)
        held = names.index(fold.held_out)
        assert (fold.test["site"] == held).all()
        assert held not in fold.fit["site"] and held not in fold.val["site"]
        assert tuple(fold.config.data.train_sites) == tuple(n for n in names if n != fold.held_out)
        assert fold.config.dann.num_domains == 4
        # the train stream of the fold: only source magnifications, never a validation or test patient
        stream = input_pipeline.make_train_iterator(fold.config, replica_data)
        seen = [next(stream) for _ in range(6)]
        assert held not in np.concatenate([b["site"] for b in seen])
        assert set(np.concatenate([b["region"] for b in seen]).tolist()) <= fit
    # the roles are the same in every fold: a patient's role does not depend on the held-out magnification
    assert len({frozenset(f.val["region"].tolist()) for f in folds}) == 1


def test_locations_pair_a_sites_tiles_and_refuse_unpaired_data(replica_data, tmp_path):
    data = {"tile_id": np.array([0, 1, 2, 3, 8, 9, 10, 11]), "site": np.array([0, 1, 2, 3, 0, 1, 2, 3])}
    np.testing.assert_array_equal(lomo_mode.locations(data, 4), [0, 0, 0, 0, 2, 2, 2, 2])
    with pytest.raises(ConfigError, match="lomo.paired=False"):
        lomo_mode.locations({**data, "site": data["site"][::-1]}, 4)
    config = _config(replica_data)  # BreaKHis: one image per magnification, nothing pairs them
    config.lomo.paired = True
    with pytest.raises(ConfigError, match="tile_id and site disagree"):
        lomo_mode.folds(config, epath.Path(tmp_path), parallel.make_mesh())


def test_lomo_refuses_no_validation_patients_and_unknown_models(replica_data):
    config = _config(replica_data)
    config.data.val_region_fraction = 0.0
    with pytest.raises(ConfigError, match="config.data.val_region_fraction=0.0"):
        lomo_mode.validate(config)
    config = _config(replica_data)
    config.lomo.models = ("baseline", "resnet")
    with pytest.raises(ConfigError, match=r"unknown: \['resnet'\]"):
        lomo_mode.validate(config)


def test_breakhis_lomo_config_end_to_end(replica_data, tmp_path):
    config = _config(replica_data)
    config.lomo.held_out = ("40X", "200X")  # two folds keep the test short; every model runs in each
    lomo_mode.validate(config)
    workdir = epath.Path(tmp_path / "work")
    results = lomo_mode.run(config, workdir)
    models = list(config.lomo.models)
    assert results["order"] == models and results["folds"] == ["40X", "200X"]
    for name in models:
        for fold in ("40X", "200X"):
            metrics = results["models"][name]["folds"][fold]["metrics"]
            assert metrics["auc"] is None or 0 <= metrics["auc"] <= 1, (name, fold)
            assert metrics["brier"] is None or 0 <= metrics["brier"] <= 1
    for fold in ("40X", "200X"):  # checkpoints compared on validation AUC: steps 1 and 2 are the candidates
        for name in ("baseline", "dcgan", "domain_general", "lmc", "lmc_scale"):
            candidates = results["selected"][name][fold]["candidates"]
            assert [step for step, _ in candidates] == [1, 2]
            assert results["selected"][name][fold]["step"] in (1, 2)
        assert (workdir / f"fold_{fold}" / "dcgan_generator" / "dcgan" / "samples.png").exists()
        run_config = json.loads((workdir / f"fold_{fold}" / "domain_general" / "config.json").read_text())
        assert run_config["dann"]["domain_field"] == "site" and fold not in run_config["data"]["train_sites"]
        assert run_config["objectives"] == ["supervised", "dann"]
    table = (workdir / "lomo.md").read_text()
    assert all(name in table for name in models) and "nan" not in table.lower()
    assert (workdir / "lomo.png").exists()
    assert json.loads((workdir / "lomo.json").read_text())["order"] == models
