#!/usr/bin/env bash
# Idempotent environment setup: creates .venv/ at the repository root and installs the project with the
# pinned torch/torchvision pair from constraints.txt. Re-running it is cheap: when pyproject.toml,
# constraints.txt and the requested extras are unchanged since the last successful run, it does nothing.
#
#   bash setup.sh              # core + demo + test extras (what both README commands need)
#   bash setup.sh libero       # additionally the LIBERO simulator extra (evaluation rollouts)
#
# Environment: PYTHON (interpreter to build the venv from, default python3, needs >= 3.10),
#              VENV_DIR (default .venv), SETUP_FORCE=1 (reinstall even when up to date),
#              TORCH_CUDA (the torch build: a PyTorch wheel tag such as cu126, cu128, cu130 or cpu, installed from
#              https://download.pytorch.org/whl/<tag>; default: PyPI's wheel, CUDA 13.0 on x86_64, which needs an
#              NVIDIA driver >= 580 and a GPU of compute capability >= 7.5, so no V100),
#              TORCH_INDEX_URL (the same from any wheel index, e.g. a mirror; wins over TORCH_CUDA).
#   TORCH_CUDA=cu126 bash setup.sh      # e.g. V100s, or a driver older than 580
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV_DIR="${VENV_DIR:-$ROOT/.venv}"

EXTRAS="demo,test"
for extra in "$@"; do
  case "$extra" in
    libero) EXTRAS="$EXTRAS,libero" ;;
    *) echo "setup.sh: unknown extra '$extra' (known: libero)" >&2; exit 2 ;;
  esac
done

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "setup.sh: '$PYTHON' not found; install Python >= 3.10 or set PYTHON=/path/to/python3" >&2
  exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
  echo "setup.sh: $("$PYTHON" --version 2>&1) is too old; this project needs Python >= 3.10 (set PYTHON=...)" >&2
  exit 1
fi

TORCH_INDEX="${TORCH_INDEX_URL:-}"
if [[ -z "$TORCH_INDEX" && -n "${TORCH_CUDA:-}" ]]; then
  if [[ ! "$TORCH_CUDA" =~ ^(cu[0-9]{3}|cpu|rocm[0-9.]+)$ ]]; then
    echo "setup.sh: TORCH_CUDA=$TORCH_CUDA is not a PyTorch wheel tag (e.g. cu126, cu128, cu130, cpu)" >&2
    exit 2
  fi
  TORCH_INDEX="https://download.pytorch.org/whl/$TORCH_CUDA"
fi
TORCH_PINS=()
while IFS= read -r pin; do TORCH_PINS+=("$pin"); done < <(grep -E '^(torch|torchvision)==' constraints.txt)

stamp_file="$VENV_DIR/.vla-setup-stamp"
stamp="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1) extras=$EXTRAS torch=${TORCH_INDEX:-pypi}"

if [[ "${SETUP_FORCE:-0}" != "1" && -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" ]] \
   && "$VENV_DIR/bin/python" -c 'import prismatic, craft' >/dev/null 2>&1; then
  echo "setup.sh: $VENV_DIR is up to date (extras: $EXTRAS)"
  exit 0
fi

if [[ ! -x "$VENV_DIR/bin/python" ]]; then
  echo "setup.sh: creating $VENV_DIR with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv "$VENV_DIR"
fi

PIP=("$VENV_DIR/bin/python" -m pip --disable-pip-version-check)
if [[ -n "$TORCH_INDEX" ]]; then
  # The chosen build first (same pinned versions); the project install below then finds them satisfied.
  echo "setup.sh: installing ${TORCH_PINS[*]} from $TORCH_INDEX"
  # Replaced only once the index has them (pip resolves before it uninstalls), then the build's own dependencies
  # (e.g. the CUDA 12 runtime packages of a cu126 build) from the same index.
  if ! "${PIP[@]}" install --quiet -c constraints.txt --no-deps --force-reinstall --index-url "$TORCH_INDEX" \
       "${TORCH_PINS[@]}" \
     || ! "${PIP[@]}" install --quiet -c constraints.txt --index-url "$TORCH_INDEX" "${TORCH_PINS[@]}"; then
    echo "setup.sh: ${TORCH_PINS[*]} is not available from $TORCH_INDEX for this platform; choose another" \
      "TORCH_CUDA / TORCH_INDEX_URL (the versions are pinned in constraints.txt)" >&2
    exit 1
  fi
fi
echo "setup.sh: installing the project with extras [$EXTRAS] (torch pinned by constraints.txt)"
"${PIP[@]}" install --quiet -c constraints.txt -e ".[$EXTRAS]"
"${PIP[@]}" check

"$VENV_DIR/bin/python" -c 'import torch; print(f"setup.sh: torch {torch.__version__}, CUDA build {torch.version.cuda}")'

# Only record success once everything above has worked, so an interrupted run is redone next time.
echo "$stamp" > "$stamp_file.tmp" && mv "$stamp_file.tmp" "$stamp_file"
echo "setup.sh: ready: $VENV_DIR (extras: $EXTRAS)"
