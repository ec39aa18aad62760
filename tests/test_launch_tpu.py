"""`./run.sh tpu --dry-run` prints the exact commands and runs none of them."""

import os
import shlex
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_dry_run_prints_archive_copy_and_run_on_all_workers():
    archive = "/tmp/lmc-jax.tar.gz"
    if os.path.exists(archive):
        os.remove(archive)
    result = subprocess.run(
        ["./run.sh", "tpu", "--name", "pod-1", "--zone", "us-central2-b", "--config", "configs/default.py",
         "--workdir", "gs://bucket/run", "--project", "proj", "--dry-run", "--", "--config.num_steps=7"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )
    lines = [shlex.split(line) for line in result.stdout.strip().splitlines()]
    assert [line[:2] for line in lines] == [["git", "archive"], ["gcloud", "compute"], ["gcloud", "compute"]]
    scp, ssh = lines[1], lines[2]
    assert scp[3:5] == ["tpu-vm", "scp"] and "pod-1:~/lmc-jax.tar.gz" in scp
    for command in (scp, ssh):
        assert "--worker=all" in command and command[command.index("--zone") + 1] == "us-central2-b"
        assert command[command.index("--project") + 1] == "proj"
    remote = ssh[ssh.index("--command") + 1]
    assert "python -m lmc_jax.main --config configs/default.py --workdir gs://bucket/run" in remote
    assert "--config.distributed.auto=True" in remote and remote.endswith("--config.num_steps=7")
    assert not os.path.exists(archive)  # --dry-run ran nothing, not even `git archive`


def test_missing_required_flag_is_refused():
    result = subprocess.run(["./run.sh", "tpu", "--name", "x", "--dry-run"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "--zone" in result.stderr
