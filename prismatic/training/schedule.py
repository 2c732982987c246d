"""Learning-rate schedule: linear warmup from 10% to 100% over `lr_warmup_steps`, then x0.1 after
`num_steps_before_decay` (a MultiStepLR milestone). It advances once per optimizer step."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR

WARMUP_START = 0.1
DECAY = 0.1


def lr_factor(step: int, warmup_steps: int, decay_step: int) -> float:
    """Multiplier of the base learning rate for the update made at optimizer step `step` (0-based)."""
    factor = 1.0
    if warmup_steps > 0 and step < warmup_steps:
        factor = WARMUP_START + (1.0 - WARMUP_START) * step / warmup_steps
    if step >= decay_step:
        factor *= DECAY
    return factor


def make_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, decay_step: int) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: lr_factor(step, warmup_steps, decay_step))
