#!/usr/bin/env bash
# Table 1: the four LIBERO suites x {baseline, CRaFT} x seeds 42, 123, 456, each trained then evaluated on its suite.
#
#   cd craft_experiments/01_main_results && bash run_table1_experiments.sh
#   DRY_RUN=1 bash run_table1_experiments.sh                 # print the commands only
#   GPUS=0,1,2,3 SUITES="spatial goal" SEEDS=42 bash run_table1_experiments.sh
#   GPUS=0,1,2,3 GPUS_PER_RUN=4 bash run_table1_experiments.sh   # the recipes' 4-GPU variant, one run at a time
#   SMOKE=1 bash run_table1_experiments.sh                   # tiny assets, synthetic data, a few steps
#
# Each suite trains with its recipe (craft_experiments/recipes/vla-adapter/<suite>.env, RECIPE in common.sh): global
# batch 64, learning rate 2e-4 held constant, steps spatial 20000, object 5000, goal 50000, long 60000.
# Runs: $RUN_ROOT/table1-{suite}-{method}-seed{seed}/ (WandB run of the same name). Knobs: SUITES [spatial object
# goal long], METHODS [baseline craft], SEEDS [42 123 456], STEPS_SPATIAL / STEPS_OBJECT / STEPS_GOAL / STEPS_LONG
# [the suite's recipe; 20000 with RECIPE=none; 8 in smoke mode], CRAFT_ARGS [the guide's full CRaFT configuration],
# plus those of common.sh (RECIPE, GPUS_PER_RUN, BATCH_SIZE, LEARNING_RATE, ...).
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../common.sh
source "$HERE/../common.sh"

SUITES="${SUITES:-spatial object goal long}"
METHODS="${METHODS:-baseline craft}"
SEEDS="${SEEDS:-42 123 456}"

for suite in $SUITES; do
  libero_suite="$(suite_of "$suite")" || exit 2
  var="STEPS_${suite^^}"
  steps="${!var:-}"
  if [[ -z "$steps" ]]; then steps="$(recipe_steps "$suite" 20000)" || exit 2; fi
  for method in $METHODS; do
    flags="$(method_flags "$method")" || exit 2
    for seed in $SEEDS; do
      # shellcheck disable=SC2086  # $flags holds several flags
      sweep_add "table1-$suite-$method-seed$seed" "$steps" "$libero_suite" --dataset_name "${libero_suite}_no_noops" --seed "$seed" $flags
    done
  done
done
sweep_run
