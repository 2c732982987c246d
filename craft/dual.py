"""The dual variable lambda of the retention constraint L_ret <= epsilon, updated by projected dual ascent.

lambda <- max(0, lambda + eta * (L_ret - epsilon)), once per optimizer step. It lives on the host as a Python float:
every rank feeds it the same all-reduced L_ret, so every rank holds the same lambda, and it round-trips exactly
through `state_dict()`.
"""

from __future__ import annotations

import math
from typing import Any

from craft.config import CRaFTConfig


class DualVariable:
    """lambda with its update rule; with the dual disabled it is constant at `fixed_lambda`."""

    def __init__(
        self,
        *,
        retention_budget: float,
        dual_lr: float,
        initial_lambda: float = 0.0,
        enabled: bool = True,
        fixed_lambda: float = 0.1,
    ) -> None:
        self.retention_budget = float(retention_budget)
        self.dual_lr = float(dual_lr)
        self.enabled = enabled
        self.fixed_lambda = float(fixed_lambda)
        self._value = float(initial_lambda) if enabled else self.fixed_lambda
        self.num_updates = 0

    @classmethod
    def from_config(cls, config: CRaFTConfig) -> DualVariable:
        """Build lambda from a CRaFT config (valid by construction)."""
        return cls(
            retention_budget=config.retention_budget,
            dual_lr=config.dual_lr,
            initial_lambda=config.initial_lambda,
            enabled=config.enable_dual,
            fixed_lambda=config.fixed_lambda,
        )

    @property
    def value(self) -> float:
        """The current lambda."""
        return self._value

    def propose(self, mean_retention_loss: float) -> tuple[float, float]:
        """(lambda now, lambda after one dual-ascent step from the step's mean L_ret), changing nothing."""
        if not math.isfinite(mean_retention_loss):
            raise ValueError(f"the dual update needs a finite retention loss (got {mean_retention_loss})")
        if not self.enabled:
            return self._value, self._value
        return self._value, max(0.0, self._value + self.dual_lr * (mean_retention_loss - self.retention_budget))

    def update(self, mean_retention_loss: float) -> tuple[float, float]:
        """One dual-ascent step from the step's mean L_ret; returns (lambda before, lambda after)."""
        before, after = self.propose(mean_retention_loss)
        if self.enabled:
            self._value = after
            self.num_updates += 1
        return before, after

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly."""
        return {"lambda": self._value, "num_updates": self.num_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a saved lambda; with the dual disabled lambda stays at the configured `fixed_lambda`."""
        if self.enabled:
            self._value = float(state["lambda"])
        self.num_updates = int(state["num_updates"])
