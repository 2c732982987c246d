#!/usr/bin/env bash
# The main job on the built-in tiny assets, offline (a few minutes on 2 CPU cores):
#   1. builds the tiny Prismatic VLM (native on-disk format) and its config bundle (real Qwen2.5 tokenizer),
#   2. writes synthetic LIBERO-Spatial RLDS data,
#   3. runs a CRaFT fine-tune with LoRA, saving a checkpoint half-way,
#   4. resumes from that checkpoint to the end, exactly where it stopped.
# Assets are reused when they exist; the demo's own run (runs/demo-tiny-craft*) is replaced on every call.
#
#   bash vla-scripts/run_demo.sh            (after `bash setup.sh`)
#
# Environment: DEMO_STEPS (default 80), DEMO_EPISODES_PER_TASK (default 5), DEMO_SEED (default 0).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
if [[ ! -x "$PY" ]]; then
  echo "run_demo.sh: $PY not found; run 'bash setup.sh' first" >&2
  exit 1
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"

VLM_DIR="pretrained_models/prism-qwen25-tiny-dinosiglip-224px"
BUNDLE_DIR="pretrained_models/configs-tiny"
DATA_DIR="data/synthetic_libero"
RUN_ROOT="runs"
RUN_ID="demo-tiny-craft"
STEPS="${DEMO_STEPS:-80}"
HALF=$((STEPS / 2))

"$PY" vla-scripts/make_tiny_vlm.py --vlm_dir "$VLM_DIR" --bundle_dir "$BUNDLE_DIR"
"$PY" vla-scripts/make_synthetic_libero.py --data_root_dir "$DATA_DIR" \
  --suites "[libero_spatial_no_noops]" \
  --episodes_per_task "${DEMO_EPISODES_PER_TASK:-5}" --seed "${DEMO_SEED:-0}" 2>/dev/null

rm -rf "$RUN_ROOT/$RUN_ID" "$RUN_ROOT/$RUN_ID"--*_chkpt

# A small budget and a fast dual step so that lambda visibly reacts within a short run.
COMMON=(
  --vlm_path "$VLM_DIR" --config_file_path "$BUNDLE_DIR"
  --data_root_dir "$DATA_DIR" --dataset_name libero_spatial_no_noops
  --run_root_dir "$RUN_ROOT" --run_id_override "$RUN_ID"
  --batch_size 4 --grad_accumulation_steps 2 --learning_rate 1e-3 --lora_rank 16
  --use_craft True --craft_retention_budget 0.02 --craft_dual_lr 0.5
  --shuffle_buffer_size 5000 --console_log_freq 10 --save_freq "$HALF"
)

echo
echo "== CRaFT fine-tune, steps 1-$HALF =="
"$PY" -m torch.distributed.run --standalone --nnodes 1 --nproc-per-node 1 vla-scripts/finetune.py \
  "${COMMON[@]}" --max_steps "$HALF" 2>/dev/null

echo
echo "== resume from $RUN_ROOT/$RUN_ID--${HALF}_chkpt, steps $((HALF + 1))-$STEPS =="
"$PY" -m torch.distributed.run --standalone --nnodes 1 --nproc-per-node 1 vla-scripts/finetune.py \
  --resume True --resume_step "$HALF" --resum_vla_path "$RUN_ROOT/$RUN_ID--${HALF}_chkpt" \
  --max_steps "$STEPS" 2>/dev/null

echo
"$PY" - "$RUN_ROOT/$RUN_ID" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(f"{sys.argv[1]}/metrics.jsonl")]
def mean(key, part):
    values = [r[key] for r in part]
    return sum(values) / len(values)
first, last = rows[:10], rows[-10:]
print(f"Action L1 loss: {mean('VLA Train/Loss', first):.4f} (steps 1-10) -> {mean('VLA Train/Loss', last):.4f} "
      f"(last 10 steps); retention loss {mean('CRaFT/Retention Loss', last):.4f} vs budget 0.02, "
      f"lambda {rows[-1]['CRaFT/Lambda']:.3f}, conflict ratio {100 * mean('CRaFT/Conflict Ratio', last):.1f}%")
EOF
echo "Run logs: $RUN_ROOT/$RUN_ID (train_progress.log, metrics.jsonl); checkpoints: $RUN_ROOT/$RUN_ID--*_chkpt"
