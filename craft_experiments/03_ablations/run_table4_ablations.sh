#!/usr/bin/env bash
# Table 4: CRaFT ablations (user's guide, section 4.3) on LIBERO-Long, 3 seeds:
#   full (projection + dual), no_projection, no_dual (fixed lambda 0.1), aq_only, raw_only.
#
#   cd craft_experiments/03_ablations && bash run_table4_ablations.sh
#   DRY_RUN=1 ABLATIONS="full no_dual" bash run_table4_ablations.sh
#   STEPS=20000 bash run_table4_ablations.sh                 # a shorter schedule than the recipe's
#
# Every run uses the recipe of its suite in full (craft_experiments/recipes/vla-adapter/<suite>.env, RECIPE in
# common.sh; LIBERO-Long: global batch 64, learning rate 2e-4, 60000 steps), so that the "full" row is the CRaFT run
# of Table 1 on that suite and the ablations differ from it in the CRaFT flags only.
# Runs: $RUN_ROOT/table4-{ablation}-seed{seed}/. Knobs: ABLATIONS [full no_projection no_dual aq_only raw_only],
# SUITE [long], SEEDS [42 123 456], STEPS [the suite's recipe; 20000 with RECIPE=none; 8 in smoke mode], plus those
# of common.sh.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../common.sh
source "$HERE/../common.sh"

ABLATIONS="${ABLATIONS:-full no_projection no_dual aq_only raw_only}"
SUITE="${SUITE:-long}"
SEEDS="${SEEDS:-42 123 456}"
libero_suite="$(suite_of "$SUITE")" || exit 2
if [[ -z "${STEPS:-}" ]]; then STEPS="$(recipe_steps "$SUITE" 20000)" || exit 2; fi
dataset="${libero_suite}_no_noops"
# finetune.py's CRaFT defaults are the guide's full configuration: each variant passes only what it changes.
for ablation in $ABLATIONS; do
  case "$ablation" in
    full) flags="--use_craft True" ;;
    no_projection) flags="--use_craft True --craft_enable_projection False" ;;
    no_dual) flags="--use_craft True --craft_enable_dual False" ;;
    aq_only) flags="--use_craft True --craft_anchor_type aq_only" ;;
    raw_only) flags="--use_craft True --craft_anchor_type raw_only" ;;
    *) echo "unknown ablation '$ablation' (full no_projection no_dual aq_only raw_only)" >&2; exit 2 ;;
  esac
  for seed in $SEEDS; do
    # shellcheck disable=SC2086  # $flags holds several flags
    sweep_add "table4-$ablation-seed$seed" "$STEPS" "$libero_suite" --dataset_name "$dataset" --seed "$seed" $flags
  done
done
sweep_run
