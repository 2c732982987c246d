#!/usr/bin/env bash
# Idempotent environment setup: creates .venv/ at the repository root and installs the project with the
# pinned torch/torchvision pair from constraints.txt. Re-running it is cheap: when pyproject.toml,
# constraints.txt and the requested extras are unchanged since the last successful run, it does nothing.
#
#   bash setup.sh              # core + demo + test extras (what both README commands need)
#   bash setup.sh libero       # additionally the LIBERO simulator extra (evaluation rollouts)
#
# Environment: PYTHON (interpreter to build the venv from, default python3, needs >= 3.10),
#              VENV_DIR (default .venv), SETUP_FORCE=1 (reinstall even when up to date).
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

stamp_file="$VENV_DIR/.vla-setup-stamp"
stamp="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1) extras=$EXTRAS"

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
echo "setup.sh: installing the project with extras [$EXTRAS] (torch pinned by constraints.txt)"
"${PIP[@]}" install --quiet -c constraints.txt -e ".[$EXTRAS]"
"${PIP[@]}" check

# Only record success once everything above has worked, so an interrupted run is redone next time.
echo "$stamp" > "$stamp_file.tmp" && mv "$stamp_file.tmp" "$stamp_file"
echo "setup.sh: ready: $VENV_DIR (extras: $EXTRAS)"
