#!/usr/bin/env bash
# The main job on the built-in tiny assets, offline: builds the demo assets (the tiny Prismatic VLM in the native
# on-disk format, its config bundle with the real Qwen2.5 tokenizer, synthetic LIBERO-Spatial RLDS data) and
# reports what it made. Re-running reuses them.
#
#   bash vla-scripts/run_demo.sh            (after `bash setup.sh`)
#
# Environment: DEMO_EPISODES_PER_TASK (default 5), DEMO_SEED (default 0).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
if [[ ! -x "$PY" ]]; then
  echo "run_demo.sh: $PY not found; run 'bash setup.sh' first" >&2
  exit 1
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

VLM_DIR="pretrained_models/prism-qwen25-tiny-dinosiglip-224px"
BUNDLE_DIR="pretrained_models/configs-tiny"
DATA_DIR="data/synthetic_libero"

"$PY" vla-scripts/make_tiny_vlm.py --vlm_dir "$VLM_DIR" --bundle_dir "$BUNDLE_DIR"
"$PY" vla-scripts/make_synthetic_libero.py --data_root_dir "$DATA_DIR" \
  --suites "[libero_spatial_no_noops]" \
  --episodes_per_task "${DEMO_EPISODES_PER_TASK:-5}" --seed "${DEMO_SEED:-0}"

echo
echo "Demo assets ready:"
echo "  $VLM_DIR   tiny Prismatic VLM (--vlm_path)"
echo "  $BUNDLE_DIR                      its config bundle (--config_file_path), real Qwen2.5 tokenizer"
echo "  $DATA_DIR/libero_spatial_no_noops   synthetic LIBERO-Spatial RLDS data (--data_root_dir $DATA_DIR)"
