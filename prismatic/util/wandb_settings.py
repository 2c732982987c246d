"""WandB settings: a flag when given, else WandB's own environment variables, else our default.

Users set `WANDB_MODE=offline` (or `disabled`), `WANDB_PROJECT`, `WANDB_ENTITY` and `WANDB_DIR` the way WandB documents
them; a tool that passes its own defaults explicitly would silently override them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

WANDB_MODES = ("online", "offline", "disabled")


@dataclass(frozen=True)
class WandbSettings:
    mode: str
    project: str
    entity: str | None
    dir: Path | None


def resolve_wandb_settings(
    mode: str | None, project: str | None, entity: str | None, default_project: str, default_dir: Path | None = None
) -> WandbSettings:
    """Flags first, then `WANDB_MODE` / `WANDB_PROJECT` / `WANDB_ENTITY` / `WANDB_DIR`, then the defaults."""
    if mode is not None:
        source = "--wandb_mode"
    else:
        mode, source = os.environ.get("WANDB_MODE") or "online", "WANDB_MODE"
    if mode not in WANDB_MODES:
        raise ValueError(f"{source} must be one of {', '.join(WANDB_MODES)} (got {mode!r})")
    env_dir = os.environ.get("WANDB_DIR")
    return WandbSettings(
        mode=mode,
        project=project or os.environ.get("WANDB_PROJECT") or default_project,
        entity=entity or os.environ.get("WANDB_ENTITY") or None,
        dir=Path(env_dir) if env_dir else default_dir,
    )
