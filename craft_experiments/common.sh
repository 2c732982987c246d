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
# Training hyper-parameters come from the suite's recipe, craft_experiments/recipes/<RECIPE>/<suite>.env: VLA-Adapter's
# published global batch, steps, learning rate, schedule, in a 1-GPU and a 4-GPU variant (craft_experiments/README.md).
#
# Environment knobs (defaults in brackets):
#   RUN_ROOT [runs]  VLM_PATH [pretrained_models/prism-qwen25-extra-dinosiglip-224px-0_5b]
#   CONFIG_FILE_PATH [pretrained_models/configs]  DATA_ROOT_DIR [data/libero]
#   GPUS [all visible GPUs, or "cpu"]  GPUS_PER_RUN [1]  USE_WANDB [True]  WANDB_PROJECT [vla-craft]  EXTRA_ARGS [""]
#   RECIPE [vla-adapter: the recipes in craft_experiments/recipes/vla-adapter/; a folder of <suite>.env files of one's
#   own; none: finetune.py's defaults, only the knobs below that are set are passed]
#   The recipe's batch follows the processes per run (GPUS_PER_RUN, 1 on the CPU): 1 -> its 1-GPU variant, 4 -> its
#   4-GPU variant, N -> the same global batch with a per-GPU batch of at most the 4-GPU one's (a count that cannot keep
#   it is refused). Overrides, each winning over the recipe: BATCH_SIZE, GRAD_ACCUMULATION_STEPS (one of the two alone:
#   the other is derived to keep the global batch), LEARNING_RATE, LR_WARMUP_STEPS, NUM_STEPS_BEFORE_DECAY, LORA_RANK,
#   USE_PRO_VERSION, IMAGE_AUG, NUM_IMAGES_IN_INPUT, USE_PROPRIO; the scripts' STEPS_* / STEPS for the steps;
#   SAVE_FREQ [finetune.py's default]; EXTRA_ARGS comes last on the command line, so it wins over everything.
#   EVAL [libero | offline | none; default libero]  EVAL_TRIALS [50]  EVAL_WORKERS [4]  EVAL_ARGS [""]
#   HELDOUT_FRACTION [0.05 with EVAL=offline, else unset: runs train on every episode, like VLA-Adapter; when set,
#   the last HELDOUT_FRACTION of the episodes is kept out of training for the offline evaluation]
#   DRY_RUN [0; 1 prints the commands only]  SMOKE [0; 1 = tiny assets, synthetic data, 8 steps of batch 2 (no
#   accumulation, LoRA rank 8; the rest of the recipe kept), offline eval; missing assets are built first,
#   SMOKE_EPISODES_PER_TASK (5) synthetic episodes per task]
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
    : "${GRAD_ACCUMULATION_STEPS:=1}"
    : "${LORA_RANK:=8}"
    : "${SAVE_FREQ:=4}"
    : "${USE_WANDB:=False}"
    : "${EVAL:=offline}"
    : "${GPUS:=cpu}"
    : "${EXTRA_ARGS:=--shuffle_buffer_size 500 --console_log_freq 2}"
  fi
  : "${RECIPE:=vla-adapter}"
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
  if [[ ! "$GPUS_PER_RUN" =~ ^[1-9][0-9]*$ ]]; then
    echo "GPUS_PER_RUN must be a positive integer (got '$GPUS_PER_RUN')" >&2
    return 2
  fi
  if [[ "$GPUS" != "cpu" ]] && (($(tr ',' '\n' <<< "$GPUS" | grep -c .) < GPUS_PER_RUN)); then
    echo "GPUS=$GPUS has fewer devices than GPUS_PER_RUN=$GPUS_PER_RUN" >&2
    return 2
  fi
  # Training processes per run: one on the CPU, GPUS_PER_RUN on GPUs (the recipe's batch variant follows it).
  SWEEP_NPROC=$([[ "$GPUS" == "cpu" ]] && echo 1 || echo "$GPUS_PER_RUN")
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

# short_suite_of SUITE: the short name of a LIBERO suite (the recipe file's name), e.g. libero_10 -> long.
short_suite_of() {
  case "$1" in
    libero_spatial | libero_object | libero_goal) echo "${1#libero_}" ;;
    libero_10) echo "long" ;;
    *) echo "unknown LIBERO suite '$1' (libero_spatial libero_object libero_goal libero_10)" >&2; return 2 ;;
  esac
}

# default_steps FULL: the optimizer steps of a run, FULL normally and 8 in smoke mode.
default_steps() {
  if [[ "${SMOKE:-0}" == "1" ]]; then echo 8; else echo "$1"; fi
}

RECIPES_DIR="$SWEEP_REPO/craft_experiments/recipes"
# RECIPE: a name (a folder of RECIPES_DIR) or a path with a '/', made absolute here (the sweep runs from the repo root).
if [[ "${RECIPE:-}" == */* && -d "$RECIPE" ]]; then RECIPE="$(cd "$RECIPE" && pwd)"; fi
# The recipe keys passed to finetune.py as they are (KEY -> --key), each overridden by the environment knob KEY.
RECIPE_FLAG_KEYS=(LEARNING_RATE LR_WARMUP_STEPS NUM_STEPS_BEFORE_DECAY LORA_RANK USE_PRO_VERSION IMAGE_AUG
                  NUM_IMAGES_IN_INPUT USE_PROPRIO)
declare -gA RECIPE_VALUES=()

# recipe_load SUITE: read the recipe of a short suite name into RECIPE_VALUES; false (nothing read) with RECIPE=none.
recipe_load() {
  local recipe="${RECIPE:-vla-adapter}"
  RECIPE_VALUES=()
  [[ "$recipe" == "none" ]] && return 1
  local dir="$RECIPES_DIR/$recipe"
  [[ "$recipe" == */* ]] && dir="$recipe"  # a folder of one's own <suite>.env files
  local file="$dir/$1.env" line key
  if [[ ! -f "$file" ]]; then
    echo "RECIPE=$recipe has no recipe for suite '$1' ($file is missing; RECIPE=none uses finetune.py's defaults)" >&2
    exit 2
  fi
  while IFS= read -r line || [[ -n "$line" ]]; do
    [[ "$line" =~ ^[[:space:]]*(#|$) ]] && continue
    key="${line%%=*}"
    [[ "$key" != "$line" && "$key" =~ ^[A-Z0-9_]+$ ]] || { echo "$file: not KEY=VALUE: $line" >&2; exit 2; }
    RECIPE_VALUES[$key]="${line#*=}"
  done < "$file"
  for key in GLOBAL_BATCH BATCH_SIZE_1GPU GRAD_ACCUMULATION_STEPS_1GPU BATCH_SIZE_4GPU GRAD_ACCUMULATION_STEPS_4GPU \
             MAX_STEPS; do
    if [[ ! "${RECIPE_VALUES[$key]:-}" =~ ^[1-9][0-9]*$ ]]; then
      echo "$file: $key is missing or not a positive integer" >&2
      exit 2
    fi
  done
  for key in "${RECIPE_FLAG_KEYS[@]}"; do
    if [[ ! "${RECIPE_VALUES[$key]:-}" =~ ^[A-Za-z0-9.+-]+$ ]]; then
      echo "$file: $key is missing or not one word" >&2
      exit 2
    fi
  done
  RECIPE_VALUES[FILE]="$file"
}

# recipe_steps SUITE FALLBACK: the optimizer steps of the suite's recipe (FALLBACK with RECIPE=none, 8 in smoke mode).
recipe_steps() {
  if [[ "${SMOKE:-0}" == "1" ]]; then echo 8; return; fi
  if recipe_load "$1"; then echo "${RECIPE_VALUES[MAX_STEPS]}"; else echo "$2"; fi
}

# recipe_flags SUITE NPROC: the finetune.py flags of the suite's recipe for NPROC processes per run, with the
# environment's overrides; the batch variant keeps the recipe's global batch (an impossible request exits 2).
recipe_flags() {
  local suite="$1" nproc="$2" batch="${BATCH_SIZE:-}" accum="${GRAD_ACCUMULATION_STEPS:-}" key value out=()
  if recipe_load "$suite"; then
    local global="${RECIPE_VALUES[GLOBAL_BATCH]}" file="${RECIPE_VALUES[FILE]}" problem=""
    for key in BATCH_SIZE GRAD_ACCUMULATION_STEPS; do
      if [[ -n "${!key:-}" && ! "${!key}" =~ ^[1-9][0-9]*$ ]]; then
        echo "$key must be a positive integer (got '${!key}')" >&2
        exit 2
      fi
    done
    if [[ -z "$batch" && -z "$accum" ]]; then
      if [[ "$nproc" == 1 || "$nproc" == 4 ]]; then
        batch="${RECIPE_VALUES[BATCH_SIZE_${nproc}GPU]}"
        accum="${RECIPE_VALUES[GRAD_ACCUMULATION_STEPS_${nproc}GPU]}"
      elif ((global % nproc == 0)); then  # the largest per-GPU batch up to the 4-GPU variant's that divides it
        local largest="${RECIPE_VALUES[BATCH_SIZE_4GPU]}"
        for ((batch = largest; batch > 1; batch--)); do
          ((global / nproc % batch == 0)) && break
        done
        accum=$((global / nproc / batch))
      else
        problem="GPUS_PER_RUN=$nproc does not divide it: use a GPU count that does, or set BATCH_SIZE and"
        problem+=" GRAD_ACCUMULATION_STEPS"
      fi
    elif [[ -z "$accum" ]]; then
      ((global % (nproc * batch) == 0)) && accum=$((global / (nproc * batch)))
      problem="BATCH_SIZE=$batch x $nproc process(es) does not divide it: choose another BATCH_SIZE, or set"
      problem+=" GRAD_ACCUMULATION_STEPS too"
    elif [[ -z "$batch" ]]; then
      ((global % (nproc * accum) == 0)) && batch=$((global / (nproc * accum)))
      problem="GRAD_ACCUMULATION_STEPS=$accum x $nproc process(es) does not divide it: choose another, or set"
      problem+=" BATCH_SIZE too"
    fi
    if [[ -z "$batch" || -z "$accum" ]]; then
      echo "cannot keep the global batch $global of $file (per-GPU batch x processes x accumulation): $problem" >&2
      exit 2
    fi
    if ((batch * nproc * accum != global)) && [[ -z "${BATCH_SIZE:-}" || -z "${GRAD_ACCUMULATION_STEPS:-}" ]]; then
      echo "$file: its ${nproc}-GPU variant does not make GLOBAL_BATCH=$global" >&2
      exit 2
    fi
  fi
  [[ -n "$batch" ]] && out+=(--batch_size "$batch")
  [[ -n "$accum" ]] && out+=(--grad_accumulation_steps "$accum")
  for key in "${RECIPE_FLAG_KEYS[@]}"; do
    value="${!key:-${RECIPE_VALUES[$key]:-}}"
    if [[ -n "$value" ]]; then out+=("--${key,,}" "$value"); fi
  done
  if ((${#out[@]} > 0)); then _q "${out[@]}"; fi
}

SWEEP_NAMES=()
SWEEP_FLAGS=()
SWEEP_STEPS=()
SWEEP_SUITES=()
SWEEP_RECIPE_FLAGS=()  # filled by sweep_run: the recipe's flags of each run (common.sh's knobs applied)

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

# The training command of a run (fresh or resumed), one line. A resumed run keeps the configuration of its checkpoint.
_train_command() {
  local name="$1" steps="$2" flags="$3" ngpu="$4" recipe_flags="$5"
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
    [[ -n "${SAVE_FREQ:-}" ]] && optional+=(--save_freq "$SAVE_FREQ")
    [[ -n "${HELDOUT_FRACTION:-}" ]] && optional+=(--heldout_episode_fraction "$HELDOUT_FRACTION")
    _q "${launch[@]}" --vlm_path "$VLM_PATH" --config_file_path "$CONFIG_FILE_PATH" \
      --data_root_dir "$DATA_ROOT_DIR" --run_root_dir "$dir" --run_id_override "$name" --max_steps "$steps"
    printf '%s' "$recipe_flags"
    _q "${optional[@]}" --use_wandb "$USE_WANDB" --wandb_project "$WANDB_PROJECT"
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
    cmd="$(_train_command "$name" "$steps" "$flags" "$ngpu" "${SWEEP_RECIPE_FLAGS[$i]}")"
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
  sweep_defaults || exit 2
  cd "$SWEEP_REPO" || exit 2
  local n=${#SWEEP_NAMES[@]} short
  for ((i = 0; i < n; i++)); do  # every run's recipe first: a bad recipe or GPU count stops the sweep before it starts
    short="$(short_suite_of "${SWEEP_SUITES[$i]}")" || exit 2
    SWEEP_RECIPE_FLAGS[i]="$(recipe_flags "$short" "$SWEEP_NPROC")" || exit 2
  done
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
        _train_command "$name" "$steps" "${SWEEP_FLAGS[$i]}" "$SWEEP_NPROC" "${SWEEP_RECIPE_FLAGS[$i]}"
        echo
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
  local ngpu="$SWEEP_NPROC"
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
