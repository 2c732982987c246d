"""Policy folders in the layout of VLA-Adapter's released models, made from any policy of ours."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from prismatic.models.loaders import PolicySpec
from prismatic.models.policy import VLAAdapterPolicy
from prismatic.models.savers import save_policy


def write_released_folder(
    folder: Path, policy: VLAAdapterPolicy, config_bundle: Path, statistics: dict[str, Any]
) -> Path:
    """Merged `model.safetensors`, `action_head--checkpoint.pt` and `proprio_projector--checkpoint.pt` with DDP's
    `module.` prefix, statistics and tokenizer files; no `vla_adapter` config section and no manifest (ours only)."""
    save_policy(folder, policy, PolicySpec(), config_bundle, statistics)
    config = json.loads((folder / "config.json").read_text())
    del config["vla_adapter"]
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "manifest.json").unlink()
    for component in ("action_head", "proprio_projector"):
        path = folder / f"{component}--checkpoint.pt"
        torch.save({f"module.{k}": v for k, v in torch.load(path, weights_only=True).items()}, path)
    return folder
