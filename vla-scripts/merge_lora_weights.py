"""Fold a checkpoint's LoRA adapter into the base VLM and save a standalone policy folder, offline.

    python vla-scripts/merge_lora_weights.py --checkpoint_dir runs/my-run--10000_chkpt
    python vla-scripts/merge_lora_weights.py --checkpoint_dir runs/my-run--10000_chkpt --output_dir merged/

The output has the layout of VLA-Adapter's released checkpoints (merged `model.safetensors`, action head and proprio
projector files, `dataset_statistics.json`, tokenizer and processor files) and loads without the base VLM. Run it
once, on one process, after training: merging needs only the adapted weights materialised anew, once.
"""

from dataclasses import dataclass
from pathlib import Path

from prismatic.models.loaders import load_policy
from prismatic.models.precision import MERGED_DTYPES
from prismatic.models.savers import save_policy
from prismatic.util.cli import cli_entry


@dataclass
class MergeLoRAConfig:
    checkpoint_dir: Path = Path("")  # a checkpoint folder with lora_adapter/ (required)
    output_dir: Path | None = None  # default: <checkpoint_dir>--merged
    base_vlm_path: Path | None = None  # default: the base VLM the checkpoint records (relative, then absolute)
    merged_dtype: str = "bf16"  # bf16 (like VLA-Adapter's released checkpoints, half the size) | fp32
    overwrite: bool = False


@cli_entry
def main(cfg: MergeLoRAConfig) -> None:
    if cfg.merged_dtype not in MERGED_DTYPES:
        raise ValueError(f"--merged_dtype must be one of {', '.join(MERGED_DTYPES)} (got {cfg.merged_dtype!r})")
    if not str(cfg.checkpoint_dir) or not (cfg.checkpoint_dir / "lora_adapter").is_dir():
        raise FileNotFoundError(f"--checkpoint_dir {cfg.checkpoint_dir!s} has no lora_adapter/ folder to merge")
    output = cfg.output_dir or cfg.checkpoint_dir.with_name(cfg.checkpoint_dir.name + "--merged")
    if output.exists() and not cfg.overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite True to replace it")
    loaded = load_policy(cfg.checkpoint_dir, base_vlm_path=cfg.base_vlm_path)
    spec = loaded.spec
    spec.extra = {**spec.extra, "merged_from": str(cfg.checkpoint_dir), "merged_lora": spec.lora}
    spec.lora = None
    save_policy(
        output,
        loaded.policy,
        spec,
        cfg.checkpoint_dir,
        loaded.dataset_statistics,
        overwrite=cfg.overwrite,
        weights_dtype=MERGED_DTYPES[cfg.merged_dtype],
    )
    print(f"[merge-lora] merged policy ({cfg.merged_dtype}) written to {output}", flush=True)


if __name__ == "__main__":
    main()
