#!/usr/bin/env bash
# Table 2: few-shot LIBERO-Spatial (5 and 10 demonstrations per task), baseline vs CRaFT, 3 seeds.
#
#   cd craft_experiments/02_stability_efficiency && bash run_table2_fewshot.sh
#   DRY_RUN=1 bash run_table2_fewshot.sh
#
# Every run uses the LIBERO-Spatial recipe (craft_experiments/recipes/vla-adapter/spatial.env, RECIPE in common.sh:
# global batch 64, learning rate 2e-4) except for its steps: 5000 instead of 20000, as few-shot data has 1/9 (5-shot)
# to 1/4 (10-shot) of the demonstrations (VLA-Adapter publishes no few-shot recipe).
# Runs: $RUN_ROOT/table2-{shots}shot-{method}-seed{seed}/. Knobs: SHOTS [5 10; 1 2 in smoke mode, whose synthetic
# data has 5 episodes per task before the held-out split], METHODS [baseline craft], SEEDS [42 123 456],
# STEPS [5000, 8 in smoke mode], CRAFT_ARGS, plus those of common.sh. Statistics come from the few-shot subset only,
# and the chosen episodes are saved in each run's folder (episodes.json).
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../common.sh
source "$HERE/../common.sh"

if [[ "${SMOKE:-0}" == "1" ]]; then SHOTS="${SHOTS:-1 2}"; else SHOTS="${SHOTS:-5 10}"; fi
METHODS="${METHODS:-baseline craft}"
SEEDS="${SEEDS:-42 123 456}"
STEPS="${STEPS:-$(default_steps 5000)}"

for shots in $SHOTS; do
  for method in $METHODS; do
    flags="$(method_flags "$method")" || exit 2
    for seed in $SEEDS; do
      # shellcheck disable=SC2086  # $flags holds several flags
      sweep_add "table2-${shots}shot-$method-seed$seed" "$STEPS" libero_spatial \
        --dataset_name libero_spatial_no_noops --n_shot_episodes "$shots" --seed "$seed" $flags
    done
  done
done
sweep_run
