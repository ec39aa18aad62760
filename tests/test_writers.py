"""MetricWriter on resume: rows of the steps a kill lost are dropped before they are logged again."""

import json

from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from lmc_jax.writers import MetricWriter


def _steps(workdir) -> list[int]:
    return [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_a_resumed_run_drops_rows_after_its_checkpoint_and_a_torn_line(tmp_path):
    writer = MetricWriter(tmp_path, total_steps=6)
    for step in range(1, 6):
        writer.write(step, {"loss": float(step)})
    writer.close()
    with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as torn:  # a kill in the middle of a write
        torn.write('{"step": 6, "lo')
    resumed = MetricWriter(tmp_path, total_steps=6, start_step=3)
    for step in range(4, 7):
        resumed.write(step, {"loss": float(step) + 0.5})
    resumed.close()
    assert _steps(tmp_path) == [1, 2, 3, 4, 5, 6]
    assert [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()][3:] == \
        [4.5, 5.5, 6.5]


def test_a_resumed_run_tells_tensorboard_where_it_restarted(tmp_path):
    MetricWriter(tmp_path, total_steps=4).close()
    MetricWriter(tmp_path, total_steps=4, start_step=2).close()
    starts = [event.step for path in (tmp_path / "tensorboard").iterdir()
              for event in EventFileLoader(str(path)).Load() if event.HasField("session_log")]
    assert starts == [2]


def test_without_a_start_step_every_row_is_kept(tmp_path):
    writer = MetricWriter(tmp_path)
    writer.write(5, {"loss": 1.0})
    writer.close()
    MetricWriter(tmp_path).close()
    assert _steps(tmp_path) == [5]
