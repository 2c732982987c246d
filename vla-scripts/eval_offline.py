"""Offline evaluation of a checkpoint on held-out episodes: action L1 and representation drift vs theta_0.

    python vla-scripts/eval_offline.py --pretrained_checkpoint runs/<run>--20000_chkpt --data_root_dir data/libero

Writes JSON (default `<checkpoint>/offline_eval.json`): action L1 (normalised / un-normalised; current, next, all),
the retention loss of the run's CRaFT anchor configuration, and linear CKA of the pooled raw-token and action-query
features per layer, fine-tuned vs initial model. The held-out episodes are the last `--heldout_episode_fraction` of
the dataset's episodes: by default the fraction the run held out of training (runs train on every episode unless
started with `--heldout_episode_fraction`, so such a run must be named explicitly and its numbers are marked as
seen in training).
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prismatic.util.cli import cli_entry


@dataclass
class EvalOfflineConfig:
    pretrained_checkpoint: Path = Path("")  # checkpoint folder; required
    data_root_dir: Path = Path("data/libero")
    dataset_name: str | None = None  # default: the dataset the checkpoint was trained on
    base_vlm_path: Path | None = None  # theta_0; default: the base VLM the checkpoint records
    heldout_episode_fraction: float | None = None  # default: the fraction the run held out of training
    max_samples: int = 1000
    batch_size: int = 8
    center_crop: bool = True
    output: Path | None = None
    device: str = "auto"


def heldout_fraction(flag: float | None, run_cfg: dict[str, Any], ckpt: Path) -> tuple[float, bool]:
    """(fraction to evaluate on, whether those episodes are unseen by the run); refuses a run with none held out."""
    run_value = run_cfg.get("heldout_episode_fraction")
    if flag is None:
        if run_value is None:
            raise ValueError(
                f"--heldout_episode_fraction is required: {ckpt} does not record the fraction it held out of training"
            )
        if run_value == 0:
            raise ValueError(
                f"--heldout_episode_fraction: {ckpt} was trained on every episode, so none is held out; train with "
                f"--heldout_episode_fraction 0.05 to evaluate on unseen episodes, or pass --heldout_episode_fraction F "
                f"here to evaluate on the last F of the episodes (seen in training)"
            )
        return float(run_value), True
    unseen = run_value is not None and flag <= run_value
    if not unseen:
        print(
            f"[eval-offline] warning: --heldout_episode_fraction {flag} reaches into episodes the run trained on "
            f"(it held out {run_value}); results are marked heldout_unseen=false"
        )
    return flag, unseen


@cli_entry
def main(cfg: EvalOfflineConfig) -> None:
    import yaml

    ckpt = cfg.pretrained_checkpoint
    if not str(ckpt) or not ckpt.is_dir():
        raise FileNotFoundError(f"--pretrained_checkpoint {ckpt!s} is not a checkpoint folder")
    run_cfg = (
        yaml.safe_load((ckpt / "finetune_config.yaml").read_text()) if (ckpt / "finetune_config.yaml").is_file() else {}
    )
    fraction, unseen = heldout_fraction(cfg.heldout_episode_fraction, run_cfg, ckpt)  # before the heavy imports

    import torch

    from craft import CRaFTConfig
    from prismatic.eval.offline import OfflineSettings, base_vlm_for, evaluate_offline
    from prismatic.models.loaders import load_policy
    from prismatic.util.atomic_io import atomic_write_json

    loaded = load_policy(ckpt, base_vlm_path=cfg.base_vlm_path)
    dataset = cfg.dataset_name or loaded.spec.dataset_name or run_cfg.get("dataset_name")
    if not dataset:
        raise ValueError("--dataset_name is required: the checkpoint does not record its dataset")
    craft = CRaFTConfig(
        **{
            name: run_cfg[f"craft_{name}"]
            for name in ("anchor_type", "anchor_layer_idx", "cr_token_mode")
            if f"craft_{name}" in run_cfg
        }
    )
    device = (
        "cuda"
        if cfg.device == "auto" and torch.cuda.is_available()
        else ("cpu" if cfg.device == "auto" else cfg.device)
    )
    settings = OfflineSettings(
        data_root_dir=cfg.data_root_dir,
        dataset_name=dataset,
        heldout_episode_fraction=fraction,
        max_samples=cfg.max_samples,
        batch_size=cfg.batch_size,
        center_crop=cfg.center_crop,
        device=device,
    )
    results = evaluate_offline(loaded, base_vlm_for(loaded, cfg.base_vlm_path), settings, craft, ckpt)
    results["checkpoint"] = str(ckpt.resolve())
    results["heldout_episode_fraction"] = fraction
    results["heldout_unseen"] = unseen
    output = cfg.output or ckpt / "offline_eval.json"
    atomic_write_json(output, results)
    l1 = results["action_l1"]
    print(
        f"[eval-offline] {dataset}: {results['num_samples']} held-out frames | L1 {l1['normalized/all']:.4f} "
        f"(current {l1['normalized/current']:.4f}, next {l1['normalized/next']:.4f}) | retention "
        f"{results['retention_loss']:.4f} | CKA raw@last {list(results['cka']['raw'].values())[-1]:.3f} -> {output}"
    )
    print(json.dumps({"cka_raw": results["cka"]["raw"]}))


if __name__ == "__main__":
    main()
