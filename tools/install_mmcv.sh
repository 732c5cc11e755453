#!/usr/bin/env bash
# Install mmcv 2.1.0 with its compiled ops for the current torch (2.14.1).
#
#   tools/install_mmcv.sh [--wheelhouse DIR] [--python PY]
#
# mmcv publishes no wheel for torch 2.14. With --wheelhouse (or VZ_MMCV_WHEELHOUSE set), the wheel built
# for this torch is installed from DIR without touching the network. Otherwise the PyPI source
# distribution is built here with one patch (torch 2.14's headers need C++20, mmcv's setup.py asks for
# C++14/17): about 20 minutes on 2 cores, with CUDA ops when nvcc and a CUDA torch are present.
# Either way the result must import mmcv.ops, or the script fails.
set -euo pipefail

MMCV_VERSION=2.1.0
WHEELHOUSE=${VZ_MMCV_WHEELHOUSE:-}
PYTHON=${PYTHON:-python}

while [ $# -gt 0 ]; do
  case "$1" in
    --wheelhouse) WHEELHOUSE=$2; shift 2 ;;
    --python) PYTHON=$2; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "install_mmcv.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

if "$PYTHON" -c "import mmcv, mmcv.ops, sys; sys.exit(mmcv.__version__ != '$MMCV_VERSION')" 2>/dev/null; then
  echo "mmcv $MMCV_VERSION with ops is already installed"
  exit 0
fi

if [ -n "$WHEELHOUSE" ]; then
  if ! ls "$WHEELHOUSE"/mmcv-"$MMCV_VERSION"-*.whl >/dev/null 2>&1; then
    echo "install_mmcv.sh: no mmcv-$MMCV_VERSION wheel in '$WHEELHOUSE'; omit --wheelhouse to build from source" >&2
    exit 1
  fi
  "$PYTHON" -m pip install --quiet --no-index --find-links "$WHEELHOUSE" --no-deps "mmcv==$MMCV_VERSION"
  "$PYTHON" -m pip install --quiet "mmengine==0.10.7" addict yapf opencv-python packaging
else
  BUILD_DIR=$(mktemp -d)
  trap 'rm -rf "$BUILD_DIR"' EXIT
  "$PYTHON" -m pip install --quiet "mmengine==0.10.7" "setuptools<70" wheel ninja psutil
  "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: "mmcv==$MMCV_VERSION" -d "$BUILD_DIR"
  tar xzf "$BUILD_DIR/mmcv-$MMCV_VERSION.tar.gz" -C "$BUILD_DIR"
  sed -i 's/-std=c++1[47]/-std=c++20/g' "$BUILD_DIR/mmcv-$MMCV_VERSION/setup.py"
  FORCE_CUDA=0
  if command -v nvcc >/dev/null && "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    FORCE_CUDA=1
  fi
  (cd "$BUILD_DIR/mmcv-$MMCV_VERSION" && MMCV_WITH_OPS=1 FORCE_CUDA=$FORCE_CUDA MAX_JOBS=${MAX_JOBS:-2} \
    "$PYTHON" -m pip wheel --quiet --no-build-isolation --no-deps . -w "$BUILD_DIR/dist")
  "$PYTHON" -m pip install --quiet "$BUILD_DIR"/dist/mmcv-"$MMCV_VERSION"-*.whl
  "$PYTHON" -m pip install --quiet addict yapf opencv-python packaging
fi

"$PYTHON" -c "import mmcv, mmcv.ops; print('mmcv', mmcv.__version__, 'with compiled ops')"
