"""CRaFT hyperparameters, named as in the training CLI (`--craft_<field>`), with validation that names the flag."""

from __future__ import annotations

import math
from dataclasses import dataclass

ANCHOR_TYPES = ("concat", "aq_only", "raw_only")
CR_TOKEN_MODES = ("vision_only", "vision_plus_prompt")


def cli_flag(field_name: str) -> str:
    """The training-CLI flag of a config field, so error messages point at what the user typed."""
    return f"--craft_{field_name}"


def check_choice(field_name: str, value: object, choices: tuple[str, ...]) -> None:
    """Raise ValueError naming the flag when `value` is not one of `choices`."""
    if value not in choices:
        raise ValueError(f"{cli_flag(field_name)} must be one of {', '.join(choices)} (got {value!r})")


@dataclass
class CRaFTConfig:
    """Constrained fine-tuning: minimise L_act subject to L_ret <= retention_budget (defaults from the user's guide)."""

    retention_budget: float = 0.1
    """epsilon: the allowed representation drift L_ret."""
    dual_lr: float = 0.01
    """eta: step size of the dual ascent on lambda."""
    enable_projection: bool = True
    """Project g_act away from g_ret on parameter tensors where they conflict."""
    enable_dual: bool = True
    """Learn lambda by dual ascent; when False lambda stays at `fixed_lambda`."""
    fixed_lambda: float = 0.1
    """lambda used for every step when the dual update is disabled."""
    anchor_type: str = "concat"
    """Which pooled features form the anchor: concat | aq_only | raw_only."""
    anchor_layer_idx: int | None = None
    """Hidden-state index m of the raw-token features; None = middle layer, negative counts from the end."""
    cr_token_mode: str = "vision_only"
    """Which tokens make up C_R: vision_only | vision_plus_prompt."""
    projection_delta: float = 1e-8
    """delta in g_act - <g_act, g_ret> / (||g_ret||^2 + delta) * g_ret; guards a zero g_ret."""
    initial_lambda: float = 0.0
    """lambda at the first step when the dual update is enabled."""

    def validate(self) -> CRaFTConfig:
        """Raise ValueError naming the CLI flag of the first bad value; return self so calls can be chained."""
        _require_finite_number("retention_budget", self.retention_budget)
        if self.retention_budget <= 0:
            raise ValueError(f"{cli_flag('retention_budget')} must be > 0 (got {self.retention_budget})")
        _require_finite_number("dual_lr", self.dual_lr)
        if self.dual_lr < 0:
            raise ValueError(f"{cli_flag('dual_lr')} must be >= 0 (got {self.dual_lr})")
        _require_finite_number("fixed_lambda", self.fixed_lambda)
        if self.fixed_lambda < 0:
            raise ValueError(f"{cli_flag('fixed_lambda')} must be >= 0 (got {self.fixed_lambda})")
        _require_finite_number("initial_lambda", self.initial_lambda)
        if self.initial_lambda < 0:
            raise ValueError(f"{cli_flag('initial_lambda')} must be >= 0 (got {self.initial_lambda})")
        _require_finite_number("projection_delta", self.projection_delta)
        if self.projection_delta <= 0:
            raise ValueError(f"{cli_flag('projection_delta')} must be > 0 (got {self.projection_delta})")
        check_choice("anchor_type", self.anchor_type, ANCHOR_TYPES)
        check_choice("cr_token_mode", self.cr_token_mode, CR_TOKEN_MODES)
        idx = self.anchor_layer_idx
        if idx is not None and (isinstance(idx, bool) or not isinstance(idx, int)):
            raise ValueError(f"{cli_flag('anchor_layer_idx')} must be an integer or None (got {idx!r})")
        for name in ("enable_projection", "enable_dual"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{cli_flag(name)} must be a boolean (got {getattr(self, name)!r})")
        return self


def _require_finite_number(field_name: str, value: object) -> None:
    """Reject non-numbers, booleans, NaN and infinities, which would poison lambda or the loss."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{cli_flag(field_name)} must be a finite number (got {value!r})")
