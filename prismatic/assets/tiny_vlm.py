"""The tiny Prismatic VLM of tests and the demo: real classes and on-disk format, tiny sizes, seeded random init."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from prismatic.assets.config_bundle import write_config_bundle
from prismatic.models.presets import TINY, VLMPreset
from prismatic.models.savers import write_prismatic_vlm_folder
from prismatic.models.vlm import PrismaticVLM

DEFAULT_TINY_VLM_DIR = Path("pretrained_models/prism-qwen25-tiny-dinosiglip-224px")
DEFAULT_TINY_BUNDLE_DIR = Path("pretrained_models/configs-tiny")


def init_vlm(preset: VLMPreset, seed: int) -> PrismaticVLM:
    """A randomly initialised VLM, identical for the same seed."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return PrismaticVLM(preset)
    finally:
        torch.random.set_rng_state(generator_state)


def write_tiny_assets(
    vlm_dir: str | Path = DEFAULT_TINY_VLM_DIR,
    bundle_dir: str | Path = DEFAULT_TINY_BUNDLE_DIR,
    seed: int = 0,
    overwrite: bool = False,
) -> tuple[Path, Path, bool]:
    """Write the tiny VLM folder (native Prismatic format) and its config bundle; returns (vlm, bundle, built).

    Existing assets made with the same seed are kept; different ones are replaced only with `overwrite`.
    """
    vlm_dir, bundle_dir = Path(vlm_dir), Path(bundle_dir)
    write_config_bundle(bundle_dir, TINY, overwrite=overwrite)
    config_path = vlm_dir / "config.json"
    if vlm_dir.exists():
        recorded = json.loads(config_path.read_text()) if config_path.is_file() else {}
        same = recorded.get("model", {}).get("model_id") == TINY.model_id and recorded.get("seed") == seed
        if same and any((vlm_dir / "checkpoints").glob("*.pt")):
            return vlm_dir, bundle_dir, False
        if not overwrite:
            raise FileExistsError(f"{vlm_dir} exists and is not the tiny VLM with seed {seed}; pass --overwrite True")
    write_prismatic_vlm_folder(vlm_dir, init_vlm(TINY, seed), seed=seed, overwrite=True)
    return vlm_dir, bundle_dir, True
