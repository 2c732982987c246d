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
    sweep_add "table4-$ablation-seed$seed" "$STEPS" "$libero_suite" --dataset_name "$dataset" --seed "$seed" $flags
  done
done
sweep_run
