"""Learning-rate schedule: linear warmup from 10% to 100% over `lr_warmup_steps`, then x0.1 after
`num_steps_before_decay` (a MultiStepLR milestone).

The rate is a pure function of the optimizer step and the flags, written into the optimizer before each update (as
nanoGPT does). There is no scheduler state to save or to get wrong on resume: a resumed run at step N uses exactly
the rate an uninterrupted one would, and a learning rate changed on resume really applies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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


@dataclass(frozen=True)
class LRSchedule:
    base_lr: float
    warmup_steps: int
    decay_step: int

    def lr(self, step: int) -> float:
        """The rate of the update made at optimizer step `step` (0-based)."""
        return self.base_lr * lr_factor(step, self.warmup_steps, self.decay_step)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every parameter group's rate for the update at `step`; returns it."""
        lr = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self, step: int) -> dict[str, float | int]:
        """What the schedule was at `step` (recorded in checkpoints for inspection; resume recomputes it)."""
        return {
            "base_lr": self.base_lr,
            "warmup_steps": self.warmup_steps,
            "decay_step": self.decay_step,
            "step": step,
            "lr": self.lr(step),
        }
