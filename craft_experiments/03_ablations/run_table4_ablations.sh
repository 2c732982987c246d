#!/usr/bin/env bash
# Table 4: CRaFT ablations (user's guide, section 4.3) on LIBERO-Long, 3 seeds:
#   full (projection + dual), no_projection, no_dual (fixed lambda 0.1), aq_only, raw_only.
#
#   cd craft_experiments/03_ablations && bash run_table4_ablations.sh
#   DRY_RUN=1 ABLATIONS="full no_dual" bash run_table4_ablations.sh
#
# Runs: $RUN_ROOT/table4-{ablation}-seed{seed}/. Knobs: ABLATIONS [full no_projection no_dual aq_only raw_only],
# SUITE [long], SEEDS [42 123 456], STEPS [20000, 8 in smoke mode], plus those of common.sh.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../common.sh"

ABLATIONS="${ABLATIONS:-full no_projection no_dual aq_only raw_only}"
SUITE="${SUITE:-long}"
SEEDS="${SEEDS:-42 123 456}"
STEPS="${STEPS:-$(default_steps 20000)}"
libero_suite="$(suite_of "$SUITE")" || exit 2
dataset="${libero_suite}_no_noops"
BASE="--use_craft True --craft_retention_budget 0.1 --craft_dual_lr 0.01"

for ablation in $ABLATIONS; do
  case "$ablation" in
    full) flags="$BASE --craft_enable_projection True --craft_enable_dual True --craft_anchor_type concat" ;;
    no_projection) flags="$BASE --craft_enable_projection False --craft_enable_dual True --craft_anchor_type concat" ;;
    no_dual) flags="$BASE --craft_enable_projection True --craft_enable_dual False --craft_fixed_lambda 0.1 --craft_anchor_type concat" ;;
    aq_only) flags="$BASE --craft_enable_projection True --craft_enable_dual True --craft_anchor_type aq_only" ;;
    raw_only) flags="$BASE --craft_enable_projection True --craft_enable_dual True --craft_anchor_type raw_only" ;;
    *) echo "unknown ablation '$ablation' (full no_projection no_dual aq_only raw_only)" >&2; exit 2 ;;
  esac
  for seed in $SEEDS; do
    sweep_add "table4-$ablation-seed$seed" "$STEPS" "$libero_suite" --dataset_name "$dataset" --seed "$seed" $flags
  done
done
sweep_run
