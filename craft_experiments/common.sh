#!/usr/bin/env bash
# Shared functions of the paper sweeps (sourced by the run_table*.sh scripts).
#
# A sweep declares its runs with `sweep_add NAME FLAGS...` and then calls `sweep_run`. Each run lives in
# $RUN_ROOT/NAME/ (logs NAME/, checkpoints NAME--<step>_chkpt/, command.sh, train.log, evaluation results):
#   - finished runs (final checkpoint present) are skipped (their evaluation is run if it is missing),
#   - interrupted runs resume from their latest checkpoint,
#   - runs are scheduled in parallel on GPU groups (GPUS, GPUS_PER_RUN) or one after another on the CPU,
#   - a failed run does not stop the others; failures are listed at the end and make the sweep exit non-zero.
#
# Environment knobs (defaults in brackets):
#   RUN_ROOT [runs]  VLM_PATH [pretrained_models/prism-qwen25-extra-dinosiglip-224px-0_5b]
#   CONFIG_FILE_PATH [pretrained_models/configs]  DATA_ROOT_DIR [data/libero]
#   GPUS [all visible GPUs, or "cpu"]  GPUS_PER_RUN [1]  USE_WANDB [True]  WANDB_PROJECT [vla-craft]  EXTRA_ARGS [""]
#   BATCH_SIZE, GRAD_ACCUMULATION_STEPS, LEARNING_RATE, SAVE_FREQ [finetune.py's defaults; each passed
#   only when set]
#   EVAL [libero | offline | none; default libero]  EVAL_TRIALS [50]  EVAL_WORKERS [4]  EVAL_ARGS [""]
#   HELDOUT_FRACTION [0.05 with EVAL=offline, else unset: runs train on every episode, like VLA-Adapter; when set,
#   the last HELDOUT_FRACTION of the episodes is kept out of training for the offline evaluation]
#   DRY_RUN [0; 1 prints the commands only]  SMOKE [0; 1 = tiny assets, synthetic data, a few steps, offline eval;
#   missing assets are built first, SMOKE_EPISODES_PER_TASK (5) synthetic episodes per task]
set -uo pipefail

SWEEP_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$([[ -x "$SWEEP_REPO/.venv/bin/python" ]] && echo "$SWEEP_REPO/.venv/bin/python" || echo python3)}"

sweep_defaults() {
  if [[ "${SMOKE:-0}" == "1" ]]; then
    : "${VLM_PATH:=pretrained_models/prism-qwen25-tiny-dinosiglip-224px}"
    : "${CONFIG_FILE_PATH:=pretrained_models/configs-tiny}"
    : "${DATA_ROOT_DIR:=data/synthetic_libero}"
    : "${RUN_ROOT:=runs/smoke}"
    : "${BATCH_SIZE:=2}"
    : "${SAVE_FREQ:=4}"
    : "${USE_WANDB:=False}"
    : "${EVAL:=offline}"
    : "${GPUS:=cpu}"
    : "${EXTRA_ARGS:=--lora_rank 8 --shuffle_buffer_size 500 --console_log_freq 2}"
  fi
  : "${VLM_PATH:=pretrained_models/prism-qwen25-extra-dinosiglip-224px-0_5b}"
  : "${CONFIG_FILE_PATH:=pretrained_models/configs}"
  : "${DATA_ROOT_DIR:=data/libero}"
  : "${RUN_ROOT:=runs}"
  : "${USE_WANDB:=True}"
  : "${WANDB_PROJECT:=vla-craft}"
  : "${EXTRA_ARGS:=}"
  : "${EVAL:=libero}"
  if [[ "$EVAL" == "offline" ]]; then : "${HELDOUT_FRACTION:=0.05}"; fi
  : "${EVAL_TRIALS:=50}"
  : "${EVAL_WORKERS:=4}"
  : "${EVAL_ARGS:=}"
  : "${GPUS_PER_RUN:=1}"
  if [[ -z "${GPUS:-}" ]]; then
    GPUS="$("$PYTHON" -c 'import torch; n = torch.cuda.device_count(); print(",".join(map(str, range(n))) or "cpu")' 2>/dev/null || echo cpu)"
  fi
}

# The guide's full CRaFT configuration (section 2.2) is finetune.py's default CRaFT configuration, so only what differs
# is passed (the run's finetune_config.yaml records every value). Overridable with CRAFT_ARGS.
CRAFT_ARGS="${CRAFT_ARGS:---use_craft True}"

# method_flags METHOD: the finetune flags of "baseline" (measuring CRaFT diagnostics every 100 steps) or "craft".
method_flags() {
  case "$1" in
    baseline) echo "--use_craft False --craft_measure_freq 100" ;;
    craft) echo "$CRAFT_ARGS" ;;
    *) echo "unknown method '$1' (baseline craft)" >&2; return 2 ;;
  esac
}

# suite_of NAME: the LIBERO suite of a short suite name (spatial object goal long), e.g. long -> libero_10.
suite_of() {
  case "$1" in
    spatial | object | goal) echo "libero_$1" ;;
    long) echo "libero_10" ;;
    *) echo "unknown suite '$1' (spatial object goal long)" >&2; return 2 ;;
  esac
}

# default_steps FULL: the optimizer steps of a run, FULL normally and 8 in smoke mode.
default_steps() {
  if [[ "${SMOKE:-0}" == "1" ]]; then echo 8; else echo "$1"; fi
}

SWEEP_NAMES=()
SWEEP_FLAGS=()
SWEEP_STEPS=()
SWEEP_SUITES=()

# sweep_add NAME MAX_STEPS SUITE FLAGS...  (SUITE: the LIBERO suite to evaluate on, e.g. libero_spatial)
sweep_add() {
  local name="$1" steps="$2" suite="$3"
  shift 3
  SWEEP_NAMES+=("$name")
  SWEEP_STEPS+=("$steps")
  SWEEP_SUITES+=("$suite")
  SWEEP_FLAGS+=("$*")
}

_q() { printf '%q ' "$@"; }

# The training command of a run (fresh or resumed), one line.
_train_command() {
  local name="$1" steps="$2" flags="$3" ngpu="$4"
  local dir="$RUN_ROOT/$name" latest=""
  local launch=("$PYTHON" -m torch.distributed.run --standalone --nnodes 1 --nproc-per-node "$ngpu"
                "$SWEEP_REPO/vla-scripts/finetune.py")
  if [[ -f "$dir/$name/latest_checkpoint.txt" ]]; then
    latest="$(tr -d '\n' < "$dir/$name/latest_checkpoint.txt")"
  fi
  if [[ -n "$latest" && -f "$dir/$latest/training_state.pt" ]]; then
    local step="${latest##*--}"
    step="${step%_chkpt}"
    _q "${launch[@]}" --resume True --resume_step "$step" --resum_vla_path "$dir/$latest" --max_steps "$steps"
  else
    local optional=()  # finetune.py's defaults unless the sweep sets them
    [[ -n "${BATCH_SIZE:-}" ]] && optional+=(--batch_size "$BATCH_SIZE")
    [[ -n "${GRAD_ACCUMULATION_STEPS:-}" ]] && optional+=(--grad_accumulation_steps "$GRAD_ACCUMULATION_STEPS")
    [[ -n "${LEARNING_RATE:-}" ]] && optional+=(--learning_rate "$LEARNING_RATE")
    [[ -n "${SAVE_FREQ:-}" ]] && optional+=(--save_freq "$SAVE_FREQ")
    [[ -n "${HELDOUT_FRACTION:-}" ]] && optional+=(--heldout_episode_fraction "$HELDOUT_FRACTION")
    _q "${launch[@]}" --vlm_path "$VLM_PATH" --config_file_path "$CONFIG_FILE_PATH" \
      --data_root_dir "$DATA_ROOT_DIR" --run_root_dir "$dir" --run_id_override "$name" --max_steps "$steps" \
      "${optional[@]}" --use_wandb "$USE_WANDB" --wandb_project "$WANDB_PROJECT"
    printf '%s %s' "$flags" "$EXTRA_ARGS"
  fi
}

_eval_command() {
  local name="$1" steps="$2" suite="$3"
  local ckpt="$RUN_ROOT/$name/$name--${steps}_chkpt"
  case "$EVAL" in
    libero)
      _q "$PYTHON" "$SWEEP_REPO/vla-scripts/eval_libero.py" --pretrained_checkpoint "$ckpt" \
        --task_suite_name "$suite" --num_trials_per_task "$EVAL_TRIALS" --num_workers "$EVAL_WORKERS" \
        --results_dir "$RUN_ROOT/$name/eval_$suite"
      printf '%s' "$EVAL_ARGS" ;;
    offline)
      _q "$PYTHON" "$SWEEP_REPO/vla-scripts/eval_offline.py" --pretrained_checkpoint "$ckpt" \
        --data_root_dir "$DATA_ROOT_DIR" --output "$RUN_ROOT/$name/offline_eval.json"
      printf '%s' "$EVAL_ARGS" ;;
    none) ;;
    *) echo "EVAL must be libero, offline or none (got '$EVAL')" >&2; return 2 ;;
  esac
}

_eval_done() {
  local name="$1" suite="$2"
  case "$EVAL" in
    libero) [[ -f "$RUN_ROOT/$name/eval_$suite/eval_results.json" ]] ;;
    offline) [[ -f "$RUN_ROOT/$name/offline_eval.json" ]] ;;
    *) true ;;
  esac
}

# Run one job (training if needed, then evaluation if needed) on the given CUDA devices; logs into the run dir.
_run_job() {
  local i="$1" devices="$2" ngpu="$3"
  local name="${SWEEP_NAMES[$i]}" steps="${SWEEP_STEPS[$i]}" suite="${SWEEP_SUITES[$i]}" flags="${SWEEP_FLAGS[$i]}"
  local dir="$RUN_ROOT/$name"
  mkdir -p "$dir"
  local env_prefix=()
  if [[ "$devices" != "cpu" ]]; then env_prefix=(env CUDA_VISIBLE_DEVICES="$devices"); fi
  if [[ ! -f "$dir/$name--${steps}_chkpt/training_state.pt" ]]; then
    if [[ -d "$dir/$name" && ! -f "$dir/$name/latest_checkpoint.txt" && -f "$dir/$name/metrics.jsonl" ]]; then
      mv "$dir/$name" "$dir/$name.failed-$(date +%s)"   # logs of an attempt that never saved: start over
    fi
    local cmd
    cmd="$(_train_command "$name" "$steps" "$flags" "$ngpu")"
    { echo "# $(date -Is) on devices $devices"; echo "$cmd"; } >> "$dir/command.sh"
    if ! eval "${env_prefix[*]} $cmd" >> "$dir/train.log" 2>&1; then
      echo "FAILED training (see $dir/train.log)" > "$dir/status"
      return 1
    fi
  fi
  if ! _eval_done "$name" "$suite"; then
    local ecmd
    ecmd="$(_eval_command "$name" "$steps" "$suite")"
    if [[ -n "$ecmd" ]]; then
      echo "$ecmd" >> "$dir/command.sh"
      if ! eval "${env_prefix[*]} $ecmd" >> "$dir/eval.log" 2>&1; then
        echo "FAILED evaluation (see $dir/eval.log)" > "$dir/status"
        return 1
      fi
    fi
  fi
  echo "done" > "$dir/status"
}

# Smoke mode builds what it trains on when missing: the tiny VLM with its config bundle and one synthetic RLDS
# dataset per suite of the sweep (both steps keep assets that already exist).
_smoke_assets_commands() {
  [[ "${SMOKE:-0}" == "1" ]] || return 0
  local datasets
  datasets="$(printf '%s_no_noops\n' "${SWEEP_SUITES[@]}" | sort -u | paste -sd, -)"
  _q "$PYTHON" "$SWEEP_REPO/vla-scripts/make_tiny_vlm.py" --vlm_dir "$VLM_PATH" --bundle_dir "$CONFIG_FILE_PATH"
  echo
  _q "$PYTHON" "$SWEEP_REPO/vla-scripts/make_synthetic_libero.py" --data_root_dir "$DATA_ROOT_DIR" \
    --suites "[$datasets]" --episodes_per_task "${SMOKE_EPISODES_PER_TASK:-5}" --seed 0
  echo
}

sweep_run() {
  sweep_defaults
  cd "$SWEEP_REPO" || exit 2
  local n=${#SWEEP_NAMES[@]}
  local asset_cmd
  while IFS= read -r asset_cmd; do
    [[ -n "$asset_cmd" ]] || continue
    if [[ "${DRY_RUN:-0}" == "1" ]]; then
      echo "$asset_cmd"
    elif ! eval "$asset_cmd"; then
      echo "[sweep] could not build the smoke assets: $asset_cmd" >&2
      exit 1
    fi
  done < <(_smoke_assets_commands)
  if [[ "${DRY_RUN:-0}" == "1" ]]; then
    for ((i = 0; i < n; i++)); do
      local name="${SWEEP_NAMES[$i]}" steps="${SWEEP_STEPS[$i]}"
      if [[ -f "$RUN_ROOT/$name/$name--${steps}_chkpt/training_state.pt" ]]; then
        echo "# skip training (finished): $name"
      else
        echo "$(_train_command "$name" "$steps" "${SWEEP_FLAGS[$i]}" "$GPUS_PER_RUN")"
      fi
      if ! _eval_done "$name" "${SWEEP_SUITES[$i]}"; then
        local ecmd
        ecmd="$(_eval_command "$name" "$steps" "${SWEEP_SUITES[$i]}")"
        [[ -n "$ecmd" ]] && echo "$ecmd"
      fi
    done
    return 0
  fi
  # GPU groups: GPUS="0,1,2,3" GPUS_PER_RUN=2 -> "0,1" and "2,3"; on the CPU one job at a time.
  local slots=()
  if [[ "$GPUS" == "cpu" ]]; then
    slots=("cpu")
  else
    IFS=',' read -r -a gpus <<< "$GPUS"
    for ((g = 0; g + GPUS_PER_RUN <= ${#gpus[@]}; g += GPUS_PER_RUN)); do
      slots+=("$(IFS=,; echo "${gpus[*]:g:GPUS_PER_RUN}")")
    done
  fi
  local ngpu=$([[ "$GPUS" == "cpu" ]] && echo 1 || echo "$GPUS_PER_RUN")
  declare -A slot_pid=()
  declare -A pid_job=()
  local failed=()
  local next=0 running=0
  while ((next < n || running > 0)); do
    for slot in "${slots[@]}"; do
      if [[ -z "${slot_pid[$slot]:-}" && next -lt n ]]; then
        echo "[sweep] start ${SWEEP_NAMES[$next]} on $slot"
        _run_job "$next" "$slot" "$ngpu" &
        slot_pid[$slot]=$!
        pid_job[$!]=$next
        next=$((next + 1))
        running=$((running + 1))
      fi
    done
    if ((running > 0)); then
      local done_pid="" rc=0
      wait -n -p done_pid
      rc=$?
      local job="${pid_job[$done_pid]}"
      for slot in "${!slot_pid[@]}"; do
        [[ "${slot_pid[$slot]}" == "$done_pid" ]] && unset "slot_pid[$slot]"
      done
      running=$((running - 1))
      if ((rc != 0)); then
        failed+=("${SWEEP_NAMES[$job]}")
        echo "[sweep] FAILED ${SWEEP_NAMES[$job]} (see $RUN_ROOT/${SWEEP_NAMES[$job]}/)"
      else
        echo "[sweep] finished ${SWEEP_NAMES[$job]}"
      fi
    fi
  done
  if ((${#failed[@]} > 0)); then
    echo "[sweep] ${#failed[@]} run(s) failed: ${failed[*]}"
    return 1
  fi
  echo "[sweep] all ${n} run(s) finished; tables: $PYTHON craft_experiments/make_tables.py --run_root $RUN_ROOT"
}
