"""Write the tiny Prismatic VLM (native on-disk format) and its config bundle, offline.

    python vla-scripts/make_tiny_vlm.py
    python vla-scripts/make_tiny_vlm.py --vlm_dir pretrained_models/prism-qwen25-tiny-dinosiglip-224px \
        --bundle_dir pretrained_models/configs-tiny --seed 0

Same classes as the real `prism-qwen25-extra-dinosiglip-224px-0_5b` (LLM hidden 64 x 4 layers, ViTs embed 64 x 3
blocks), the real Qwen2.5 tokenizer, random weights. Tests and the demo load it through the real loader.
"""

from dataclasses import dataclass
from pathlib import Path

from prismatic.assets.tiny_vlm import DEFAULT_TINY_BUNDLE_DIR, DEFAULT_TINY_VLM_DIR, write_tiny_assets
from prismatic.util.cli import cli_entry


@dataclass
class MakeTinyVLMConfig:
    vlm_dir: Path = DEFAULT_TINY_VLM_DIR  # the VLM folder (--vlm_path of finetune.py)
    bundle_dir: Path = DEFAULT_TINY_BUNDLE_DIR  # its config bundle (--config_file_path)
    seed: int = 0  # initialisation seed
    overwrite: bool = False  # replace assets made with another seed


@cli_entry
def main(cfg: MakeTinyVLMConfig) -> None:
    vlm_dir, bundle_dir, built = write_tiny_assets(cfg.vlm_dir, cfg.bundle_dir, cfg.seed, cfg.overwrite)
    state = "written" if built else "up to date, kept"
    print(f"[tiny-vlm] {vlm_dir} ({state}); config bundle {bundle_dir}", flush=True)


if __name__ == "__main__":
    main()
