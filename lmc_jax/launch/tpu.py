"""Launch a config on every worker of a Cloud TPU VM: ship the code, install, run main with jax.distributed.

    ./run.sh tpu --name my-v4-32 --zone us-central2-b --config configs/lmc_vit_s16_tpu.py \
        --workdir gs://my-bucket/lmc/s16 [--project P] [--dry-run] [-- --config.num_steps=1000]

`--dry-run` prints the exact commands instead of running them. Standard library only.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

REMOTE_DIR = "~/lmc-jax"
ARCHIVE = "/tmp/lmc-jax.tar.gz"


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Launcher flags, and the overrides after `--` that go to lmc_jax.main unchanged."""
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(prog="./run.sh tpu", description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True, help="TPU VM name")
    parser.add_argument("--zone", required=True, help="TPU zone, e.g. us-central2-b")
    parser.add_argument("--config", required=True, help="config file, e.g. configs/lmc_vit_s16_tpu.py")
    parser.add_argument("--workdir", required=True, help="output directory, normally gs://bucket/path")
    parser.add_argument("--project", default=None, help="GCP project (default: gcloud's)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    if not args.workdir.startswith("gs://"):
        print(f"warning: --workdir {args.workdir} is not a gs:// path; each worker writes its own local copy",
              file=sys.stderr)
    return args, extra


def commands(args: argparse.Namespace, extra: list[str]) -> list[list[str]]:
    """Archive the checkout, copy it to all workers, install and run on all workers at once."""
    base = ["gcloud", "compute", "tpus", "tpu-vm"]
    where = ["--zone", args.zone, "--worker=all"] + (["--project", args.project] if args.project else [])
    main = [".venv/bin/python", "-m", "lmc_jax.main", "--config", args.config, "--workdir", args.workdir,
            "--config.distributed.auto=True", "--config.model.dtype=bfloat16", *extra]
    remote = " && ".join([
        f"mkdir -p {REMOTE_DIR}",
        f"tar xzf ~/lmc-jax.tar.gz -C {REMOTE_DIR}",
        f"cd {REMOTE_DIR}",
        "(test -x .venv/bin/python || python3 -m venv .venv)",
        ".venv/bin/pip install --quiet -e . 'jax[tpu]' gcsfs",  # gcsfs: gs:// workdirs
        shlex.join(main),
    ])
    return [
        ["git", "archive", "--format=tar.gz", "-o", ARCHIVE, "HEAD"],
        [*base, "scp", ARCHIVE, f"{args.name}:~/lmc-jax.tar.gz", *where],
        [*base, "ssh", args.name, *where, "--command", remote],
    ]


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    for command in commands(args, extra):
        print(shlex.join(command), flush=True)
        if not args.dry_run:
            result = subprocess.run(command, check=False)
            if result.returncode:
                print(f"failed ({result.returncode}): {shlex.join(command)}", file=sys.stderr)
                return result.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
