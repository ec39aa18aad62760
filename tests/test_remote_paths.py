"""gs:// workdirs and data dirs on a fake bucket: every writer goes through etils.epath, nothing lands in a local
`gs:/...` or `/gs/...` folder.

The fake is fsspec's in-memory file system registered as the `gs`/`gcs` protocol, which is what epath uses for
gs:// without TensorFlow (gcsfs on a real machine). Orbax writes arrays through TensorStore's own GCS driver and
TFDS reads array_record shards in C++, neither of which sees fsspec: so the tiny training run here keeps its
checkpoints (and its data) in local folders and writes everything else (config.json, metrics.jsonl, tensorboard/)
to the bucket; each other writer (report, export) and the data-dir handling is tested on the bucket on its own.
"""

import json
import os

import fsspec
import numpy as np
import pytest
from etils import epath
from etils.epath import backend as epath_backend
from etils.epath import gpath
from fsspec.implementations.memory import MemoryFileSystem

from data_pipelines import input_pipeline
from data_pipelines.build import DataError
from lmc_jax.export.write import write_export
from lmc_jax.writers import MetricWriter
from tests.tiny_config import default_config

BUCKET = "gs://bucket"


class FakeGCS(MemoryFileSystem):
    """An in-memory bucket store answering gs:// paths like gcsfs does (keys without a leading slash)."""

    protocol = ("gs", "gcs")
    store: dict = {}
    pseudo_dirs = [""]
    root_marker = ""

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        for prefix in ("gs://", "gcs://"):
            path = path.removeprefix(prefix)
        return path.strip("/")


@pytest.fixture
def bucket(monkeypatch, tmp_path):
    """A fresh fake bucket; the working directory is an empty tmp folder, checked for `gs:` leftovers after."""
    for name in ("gs", "gcs"):
        fsspec.register_implementation(name, FakeGCS, clobber=True)
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)  # the fsspec backend, even where TF exists
    epath_backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
    FakeGCS.store.clear()
    FakeGCS.pseudo_dirs[:] = [""]
    monkeypatch.chdir(tmp_path)
    yield epath.Path(BUCKET)
    assert not os.path.exists(tmp_path / "gs:") and not os.path.exists("/gs/bucket"), "a gs:// path went local"
    epath_backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access


def test_the_fake_bucket_is_not_the_local_disk(bucket):
    (bucket / "probe").write_text("x")
    assert str(bucket / "probe") == "gs://bucket/probe" and "bucket/probe" in FakeGCS.store


def test_metric_writer_writes_jsonl_and_tensorboard_to_the_bucket_and_appends_on_resume(bucket):
    run = bucket / "run"
    writer = MetricWriter(run, total_steps=4)
    writer.write(2, {"loss": 1.5})
    assert (run / "metrics.jsonl").read_text().splitlines() == ['{"step": 2, "loss": 1.5}']  # there before close
    writer.write(4, {"loss": 0.5})
    writer.close()
    events = list((run / "tensorboard").iterdir())
    assert len(events) == 1 and events[0].name.startswith("events.out.tfevents.")
    assert b"loss" in events[0].read_bytes()
    resumed = MetricWriter(run, total_steps=6)
    resumed.write(6, {"loss": 0.25})
    resumed.close()
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [2, 4, 6]
    assert len(list((run / "tensorboard").iterdir())) == 2


def test_write_report_writes_every_file_to_the_bucket_and_the_same_bytes_as_locally(bucket, tmp_path):
    from tests.test_report import _method, default_settings  # pylint: disable=import-outside-toplevel

    import jax  # pylint: disable=import-outside-toplevel

    from lmc_jax.evaluate import figures, report  # pylint: disable=import-outside-toplevel
    from lmc_jax.evaluate.suite import evaluate_embeddings  # pylint: disable=import-outside-toplevel

    methods = {"lmc": _method(0, 0.1), "baseline": _method(1, 2.0)}
    settings = default_settings(bootstrap_replicates=50, protocol_folds=3, signature_folds=3, signature_lambdas=5,
                                signature_stability_rounds=0)
    metrics = evaluate_embeddings(methods, site_names=["scanner_a", "scanner_b", "ihc"], source_site="scanner_a",
                                  key=jax.random.key(0), settings=settings)
    projections = {name: figures.Projection(figures.pca_2d(m.heldout), m.heldout_sites, m.heldout_labels)
                   for name, m in methods.items()}
    remote = report.write_report(metrics, bucket / "run" / "eval", projections=projections)
    local = report.write_report(metrics, tmp_path / "local_eval", projections=projections)
    assert set(remote) == set(local) == {"metrics", "report", "html", "embeddings", "auc", "reliability", "signatures"}
    for kind, path in remote.items():
        assert str(path).startswith("gs://bucket/run/eval/") and path.exists()
        assert path.read_bytes() == local[kind].read_bytes(), kind  # the local outputs are what they were


def test_write_export_writes_into_the_bucket_and_replaces_only_when_asked(bucket):
    out = bucket / "export"
    paths = write_export(str(out), {"model.safetensors": {"a": np.ones(3)}}, {"v": 1})
    assert [str(p) for p in paths] == ["gs://bucket/export/model.safetensors", "gs://bucket/export/config.json"]
    assert json.loads((out / "config.json").read_text()) == {"v": 1}
    with pytest.raises(FileExistsError, match="gs://bucket/export is not empty"):
        write_export(out, {"model.safetensors": {"a": np.zeros(3)}}, {"v": 2})
    write_export(out, {"model.safetensors": {"a": np.zeros(3)}}, {"v": 2}, overwrite=True)
    assert json.loads((out / "config.json").read_text()) == {"v": 2}
    assert sorted(p.name for p in bucket.iterdir()) == ["export"]  # no staging or old copies left behind


def _config(data_dir: str, name: str = "cmu_small_region"):
    config = default_config()
    config.data.name, config.data.data_dir = name, data_dir
    return config


def test_a_data_dir_in_the_bucket_keeps_its_gs_prefix(bucket):
    data_dir = f"{BUCKET}/tfds"
    with pytest.raises(DataError) as raised:
        input_pipeline.ensure_built(_config(data_dir, "midog"))
    assert f"config.data.data_dir='{data_dir}'" in str(raised.value)
    assert f"--data_dir {data_dir} " in str(raised.value) and "gs:/bucket" not in str(raised.value)
    with pytest.raises(DataError, match=f"not built under {data_dir}/cmu_small_region/tile64 "):
        input_pipeline.split_size(_config(data_dir), data_dir, "train")
    (bucket / "tfds" / "cmu_small_region" / "tile64" / "1.0.0").mkdir(parents=True)
    (bucket / "tfds" / "cmu_small_region" / "tile64" / "1.0.0" / "dataset_info.json").write_text("{}")
    input_pipeline.ensure_built(_config(data_dir))  # found in the bucket: nothing is built locally


def test_the_default_data_dir_is_tfds_data_dir_when_set(monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", f"{BUCKET}/tfds")
    assert default_config().data.data_dir == f"{BUCKET}/tfds"
    monkeypatch.delenv("TFDS_DATA_DIR")
    assert default_config().data.data_dir.endswith(os.path.join("data", "tfds"))


def test_a_tiny_training_run_writes_config_metrics_and_tensorboard_to_the_bucket(bucket, tmp_path, monkeypatch,
                                                                                  tiny_data_dir):
    from lmc_jax import train  # pylint: disable=import-outside-toplevel
    from tests.conftest import TINY_BUILDER  # pylint: disable=import-outside-toplevel
    from tests.tiny_config import tiny_config  # pylint: disable=import-outside-toplevel

    config = tiny_config()
    config.data.data_dir, config.data.builder_config = str(tiny_data_dir), TINY_BUILDER
    local_checkpoints = tmp_path / "checkpoints"
    orbax_checkpointer = train.Checkpointer
    monkeypatch.setattr(train, "Checkpointer", lambda directory, **kw: orbax_checkpointer(local_checkpoints, **kw))
    train.train(config, bucket / "run")
    run = bucket / "run"
    assert json.loads((run / "config.json").read_text())["num_steps"] == config.num_steps
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(config.log_every_steps, config.num_steps + 1, config.log_every_steps))
    assert [p.name[:20] for p in (run / "tensorboard").iterdir()] == ["events.out.tfevents."]
    assert sorted(p.name for p in local_checkpoints.iterdir() if p.name.isdigit())[-1] == str(config.num_steps)
