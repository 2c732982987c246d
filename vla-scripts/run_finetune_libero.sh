#!/usr/bin/env bash
# Launch vla-scripts/finetune.py with torchrun, every main flag set from an environment variable.
# Defaults are the real 1-GPU VLA-Adapter-Pro recipe on LIBERO-Spatial (batch 4 x accumulation 4, lr 2e-4, decay at
# 150k steps); everything else is finetune.py's default.
#
#   bash vla-scripts/run_finetune_libero.sh
#   USE_CRAFT=True DATASET_NAME=libero_goal_no_noops NUM_GPUS=4 BATCH_SIZE=16 bash vla-scripts/run_finetune_libero.sh
#   RESUME=True RESUME_STEP=10000 RESUME_VLA_PATH=runs/my-run--10000_chkpt bash vla-scripts/run_finetune_libero.sh
#
# When resuming, only the variables you set explicitly are passed on: everything else comes from the configuration
# saved in the checkpoint. RESUME_STEP is checked against the checkpoint (and inferred from it when unset or wrong).
# WandB's own variables (WANDB_MODE=offline|disabled, WANDB_DIR, ...) reach finetune.py untouched; TRAIN_WANDB_MODE
# sets --wandb_mode explicitly. Anything in EXTRA_ARGS is appended verbatim. DRY_RUN=1 prints the command only.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}"
NUM_GPUS="${NUM_GPUS:-1}"
RESUME="${RESUME:-False}"

# variable:flag:default. Only the recipe's values that differ from finetune.py's defaults are given here; an empty
# default means "not passed unless set" (finetune.py's own default applies).
FLAGS=(
  "VLM_PATH:vlm_path:"
  "CONFIG_FILE_PATH:config_file_path:"
  "DATA_ROOT_DIR:data_root_dir:"
  "DATASET_NAME:dataset_name:"
  "RUN_ROOT_DIR:run_root_dir:"
  "RUN_ID_NOTE:run_id_note:"
  "RUN_ID_OVERRIDE:run_id_override:"
  "USE_LORA:use_lora:"
  "LORA_RANK:lora_rank:"
  "USE_PRO_VERSION:use_pro_version:"
  "USE_PROPRIO:use_proprio:"
  "NUM_IMAGES_IN_INPUT:num_images_in_input:"
  "IMAGE_AUG:image_aug:"
  "SHUFFLE_BUFFER_SIZE:shuffle_buffer_size:"
  "N_SHOT_EPISODES:n_shot_episodes:"
  "BATCH_SIZE:batch_size:4"
  "GRAD_ACCUMULATION_STEPS:grad_accumulation_steps:4"
  "LEARNING_RATE:learning_rate:2e-4"
  "LR_WARMUP_STEPS:lr_warmup_steps:"
  "NUM_STEPS_BEFORE_DECAY:num_steps_before_decay:150000"
  "MAX_STEPS:max_steps:"
  "MAX_GRAD_NORM:max_grad_norm:"
  "GRADIENT_CHECKPOINTING:gradient_checkpointing:"
  "SEED:seed:"
  "SAVE_FREQ:save_freq:"
  "SAVE_LATEST_CHECKPOINT_ONLY:save_latest_checkpoint_only:"
  "KEEP_LAST_N_CHECKPOINTS:keep_last_n_checkpoints:"
  "ALLOW_RESUME_CONFIG_CHANGE:allow_resume_config_change:"
  "CONSOLE_LOG_FREQ:console_log_freq:"
  "USE_WANDB:use_wandb:"
  "WANDB_PROJECT:wandb_project:vla-experiments"
  "WANDB_ENTITY:wandb_entity:"
  "TRAIN_WANDB_MODE:wandb_mode:"
  "WANDB_LOG_FREQ:wandb_log_freq:"
  "USE_CRAFT:use_craft:"
  "CRAFT_RETENTION_BUDGET:craft_retention_budget:"
  "CRAFT_DUAL_LR:craft_dual_lr:"
  "CRAFT_ENABLE_PROJECTION:craft_enable_projection:"
  "CRAFT_ENABLE_DUAL:craft_enable_dual:"
  "CRAFT_FIXED_LAMBDA:craft_fixed_lambda:"
  "CRAFT_ANCHOR_TYPE:craft_anchor_type:"
  "CRAFT_ANCHOR_LAYER_IDX:craft_anchor_layer_idx:"
  "CRAFT_CR_TOKEN_MODE:craft_cr_token_mode:"
  "CRAFT_MEASURE_FREQ:craft_measure_freq:"
)

ARGS=()
for entry in "${FLAGS[@]}"; do
  IFS=: read -r var flag default <<<"$entry"
  if [[ -n "${!var+x}" ]]; then
    ARGS+=("--$flag" "${!var}")                 # set explicitly: always passed
  elif [[ "$RESUME" != "True" && -n "$default" ]]; then
    ARGS+=("--$flag" "$default")                # fresh run: the recipe's default
  fi
done

if [[ "$RESUME" == "True" ]]; then
  if [[ -z "${RESUME_VLA_PATH:-}" || ! -d "$RESUME_VLA_PATH" ]]; then
    echo "run_finetune_libero.sh: RESUME=True needs RESUME_VLA_PATH=<checkpoint folder> (got '${RESUME_VLA_PATH:-}')" >&2
    exit 2
  fi
  INFERRED="$("$PYTHON" -c "import sys; from prismatic.training.checkpointing import infer_checkpoint_step as f; \
s = f(sys.argv[1]); print('' if s is None else s)" "$RESUME_VLA_PATH" 2>/dev/null || true)"
  if [[ -n "$INFERRED" && "${RESUME_STEP:-}" != "$INFERRED" ]]; then
    echo "run_finetune_libero.sh: RESUME_STEP=${RESUME_STEP:-<unset>} does not match $RESUME_VLA_PATH (step $INFERRED); using $INFERRED" >&2
    RESUME_STEP="$INFERRED"
  fi
  if [[ -z "${RESUME_STEP:-}" ]]; then
    echo "run_finetune_libero.sh: cannot infer the step of $RESUME_VLA_PATH; set RESUME_STEP" >&2
    exit 2
  fi
  ARGS+=(--resume True --resume_step "$RESUME_STEP" --resum_vla_path "$RESUME_VLA_PATH")
fi

TORCHRUN=("$PYTHON" -m torch.distributed.run --standalone --nnodes 1 --nproc-per-node "$NUM_GPUS")
# shellcheck disable=SC2206
CMD=("${TORCHRUN[@]}" vla-scripts/finetune.py "${ARGS[@]}" ${EXTRA_ARGS:-})
printf 'run_finetune_libero.sh: running:'; printf ' %q' "${CMD[@]}"; printf '\n'
if [[ "${DRY_RUN:-0}" == "1" ]]; then
  exit 0
fi
exec "${CMD[@]}"
