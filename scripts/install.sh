#!/usr/bin/env bash
# Install into a fresh virtual environment, with the torch build for this machine and the
# versions the tests run with (constraints.txt):
#
#   bash scripts/install.sh            # auto: CUDA build if nvidia-smi sees a GPU, else CPU
#   bash scripts/install.sh cpu        # CPU-only build (about 200 MB instead of 5 GB)
#   bash scripts/install.sh cuda .venv # CUDA build (PyPI's default), into .venv
#
# Then: . .venv/bin/activate && snakemake --cores all
# CLIPES_TORCH_CPU_INDEX replaces PyTorch's CPU wheel index (a mirror); with
# CLIPES_INSTALL_DRY_RUN=1 pip only resolves (pip install --dry-run) after making the venv.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-auto}
venv=${2:-.venv}
case "$build" in
  auto) if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
          build=cuda; else build=cpu; fi ;;
  cpu|cuda) ;;
  *) echo "usage: bash scripts/install.sh [auto|cpu|cuda] [VENV]" >&2; exit 2 ;;
esac
python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
  { echo "error: Python 3.10 or newer is needed ($(python3 --version))" >&2; exit 2; }
torch=$(grep -E '^(torch|torchvision)==' constraints.txt | tr '\n' ' ')
dry=()
[ "${CLIPES_INSTALL_DRY_RUN:-0}" = 1 ] && dry=(--dry-run)
echo "installing into $venv: $torch($build build), then the project with constraints.txt" >&2
python3 -m venv "$venv"
py="$venv/bin/python"
if [ "$build" = cpu ]; then
  # shellcheck disable=SC2086
  "$py" -m pip install "${dry[@]}" $torch \
    --index-url "${CLIPES_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
else
  # shellcheck disable=SC2086
  "$py" -m pip install "${dry[@]}" $torch
fi
"$py" -m pip install "${dry[@]}" -c constraints.txt -e ".[test]"
echo "done: . $venv/bin/activate && snakemake --cores all" >&2
