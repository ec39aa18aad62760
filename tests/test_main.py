"""The entry point: config.mode picks a module of lmc_jax.modes; a user error is one line, nothing is created."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmc_jax.main", *args], cwd=ROOT, capture_output=True, text=True)


def test_unknown_mode_and_missing_run_are_one_line_each(tmp_path):
    unknown = _main("--config", "configs/default.py", "--config.mode=fit", "--workdir", str(tmp_path / "w"))
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr
    assert unknown.stderr.strip().splitlines()[-1].startswith("error: config.mode='fit': choose one of")
    missing = tmp_path / "nowhere"
    result = _main("--config", "configs/evaluate.py", f"--config.eval.checkpoint={missing}",
                   "--workdir", str(tmp_path / "out"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {missing}/config.json does not exist: expected the workdir of a training run (or its "
        "checkpoints/ folder); `python -m lmc_jax.main` writes config.json beside checkpoints/.")
    assert not missing.exists()


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    """The run failed with no traceback and its last stderr line is one `error:` line; returns that line."""
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr[-2000:]
    return last


def test_unknown_config_key_names_it_and_the_close_match(tmp_path):
    line = _one_error_line(_main("--config", "configs/default.py", "--config.data.nme=x", "--workdir", str(tmp_path)))
    assert line == ("error: --config.data.nme: configs/default.py has no key config.data.nme; "
                    "did you mean --config.data.name?")
    line = _one_error_line(_main("--config", "configs/default.py", "--config.nope=1"))
    assert line.startswith("error: --config.nope: configs/default.py has no key config.nope; the keys of config are ")


def test_wrong_type_names_the_key_and_its_type():
    line = _one_error_line(_main("--config", "configs/default.py", "--config.batch_size=abc"))
    assert line == ("error: --config.batch_size=abc: invalid literal for int() with base 10: 'abc'; "
                    "give config.batch_size a value of type int, like its default 64")
    line = _one_error_line(_main("--config", "configs/default.py", "--config.model.projector_dims=abc"))
    assert line == "error: --config.model.projector_dims=('abc',): give a tuple of int, like its default (512, 512, 512)"
    line = _one_error_line(_main("--config", "configs/default.py", "--config.optimizer=3"))
    assert line.endswith("config.optimizer is a group: set its keys one at a time (--config.optimizer.<key>=...)")


def test_missing_config_file_and_missing_config_flag():
    for extra in ((), ("--config.seed=1",)):
        line = _one_error_line(_main("--config", "configs/nope.py", *extra))
        assert line.startswith("error: --config configs/nope.py: no such file; pass a config file, e.g. --config")
    assert _one_error_line(_main("--workdir", "w")).startswith("error: --config is missing: pass a config file")


def test_debug_shows_the_traceback():
    result = _main("--config", "configs/default.py", "--config.nope=1", "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_unknown_data_set_name_lists_the_builders(tmp_path):
    line = _one_error_line(_main("--config", "configs/default.py", "--config.data.name=camelyon17",
                                 "--workdir", str(tmp_path / "w")))
    assert line.startswith("error: config.data.name='camelyon17': choose a data set of data_pipelines/builders/: ")
    assert "camelyon17_wilds" in line and "cmu_small_region" in line
    assert not (tmp_path / "w").exists()


def test_data_set_not_built_names_the_data_dir_and_the_build_command(tmp_path):
    data_dir = tmp_path / "tfds"
    line = _one_error_line(_main("--config", "configs/default.py", "--config.data.name=midog",
                                 f"--config.data.data_dir={data_dir}", "--workdir", str(tmp_path / "w")))
    assert f"config.data.data_dir='{data_dir}'" in line
    assert f"python -m data_pipelines.build --name midog --config tile64 --data_dir {data_dir} --manual_dir" in line


def _build(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "data_pipelines.build", *args], cwd=ROOT, capture_output=True,
                          text=True)


def test_build_cli_errors_are_one_line(tmp_path):
    data_dir = str(tmp_path / "tfds")
    line = _one_error_line(_build("--name", "camelyon17", "--data_dir", data_dir))
    assert line.startswith("error: Unknown data set 'camelyon17': choose one of ") and "camelyon17_wilds" in line
    line = _one_error_line(_build("--name", "midog", "--data_dir", data_dir))
    assert line.startswith("error: midog is built from files you download: pass --manual_dir")
    line = _one_error_line(_build("--name", "midog", "--data_dir", data_dir, "--manual_dir", str(tmp_path / "no")))
    assert line.startswith(f"error: manual_dir '{tmp_path / 'no'}' is not a folder")
    line = _one_error_line(_build("--name", "midog", "--data_dir", data_dir, "--manual_dir", str(tmp_path)))
    assert line.startswith(f"error: Expected the MIDOG 2021 annotations at {tmp_path}/MIDOG.json")
    line = _one_error_line(_build("--name", "midog", "--config", "tile7", "--data_dir", data_dir,
                                  "--manual_dir", str(tmp_path)))
    assert line.startswith("error: Unknown builder config 'tile7' of midog: choose one of ")


def test_a_full_disk_is_one_line_naming_the_path(monkeypatch, capsys):
    """OSError(ENOSPC) from a writer, however deep in the exception chain, ends in one `error:` line."""
    import errno

    import pytest
    from absl import flags

    from lmc_jax import main as entry

    def full(_argv):
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/w/checkpoints/6")
        except OSError as error:
            raise RuntimeError("async save failed") from error

    monkeypatch.setattr(entry, "_dispatch", full)
    monkeypatch.delenv(entry.DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as exited:
        entry.main(["lmc_jax.main"])
    assert str(exited.value.code) == (
        "error: no space left on the device writing /w/checkpoints/6: free space there (or point --workdir / "
        "config.data.data_dir at a larger disk) and run the same command again; a training run resumes from its "
        "last checkpoint")

    def tensorstore_full(_argv):
        raise ValueError("Error writing local file \"/w/checkpoints/6/state/d/1\": [OS error: No space left on device]")

    monkeypatch.setattr(entry, "_dispatch", tensorstore_full)
    monkeypatch.setattr(flags.FLAGS, "workdir", "/w")
    with pytest.raises(SystemExit) as exited:
        entry.main(["lmc_jax.main"])
    assert str(exited.value.code).startswith("error: no space left on the device writing /w: free space there")

    def broken(_argv):
        raise OSError(errno.EACCES, "Permission denied", "/w")

    monkeypatch.setattr(entry, "_dispatch", broken)
    with pytest.raises(PermissionError):  # anything else keeps its traceback
        entry.main(["lmc_jax.main"])


def test_a_bucket_path_without_gcsfs_says_what_to_install(tmp_path):
    import importlib.util  # pylint: disable=import-outside-toplevel

    import pytest  # pylint: disable=import-outside-toplevel

    if importlib.util.find_spec("gcsfs") or importlib.util.find_spec("tensorflow"):
        pytest.skip("gs:// is served here (gcsfs or TensorFlow installed)")
    line = _one_error_line(_main("--config", "configs/default.py", "--config.data.data_dir=gs://bucket/tfds",
                                 "--workdir", str(tmp_path / "w")))
    assert line.startswith("error: gs:// paths need the gcsfs package: pip install gcsfs")
