"""Fine-tune VLA-Adapter on LIBERO RLDS data, baseline or with CRaFT.

    torchrun --standalone --nnodes 1 --nproc-per-node 1 vla-scripts/finetune.py \\
      --vlm_path pretrained_models/prism-qwen25-extra-dinosiglip-224px-0_5b \\
      --config_file_path pretrained_models/configs \\
      --data_root_dir data/libero --dataset_name libero_spatial_no_noops --use_craft True

Plain `python vla-scripts/finetune.py ...` runs one process. Resume with
`--resume True --resume_step N --resum_vla_path runs/<run>--N_chkpt` (the other flags default to the checkpoint's).
Start a new run from a released VLA-Adapter model or another checkpoint's weights with `--init_from DIR` (fresh
optimizer and schedule); `--resume True` on a folder without training_state.pt does the same, as in VLA-Adapter.
All flags: `python vla-scripts/finetune.py --help`; guide: docs/TRAINING_AND_EVALUATION.md.
"""

import sys

from prismatic.training.config import parse_finetune_config
from prismatic.training.trainer import NonFiniteTrainingError, train
from prismatic.util.cli import exit_on_user_error


@exit_on_user_error
def main() -> None:
    cfg = parse_finetune_config(sys.argv[1:])
    try:
        run_dir = train(cfg)
    except NonFiniteTrainingError as err:  # diverged: the message says which flag to change
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(1) from err
    print(f"[finetune] done: {run_dir}", flush=True)


if __name__ == "__main__":
    main()
