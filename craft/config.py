"""CRaFT hyperparameters, validated when a `CRaFTConfig` is built: a config that exists is a valid one.

Errors name the config field (`CRaFTConfigError.field`); a host program maps fields to its own flag names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ANCHOR_TYPES = ("concat", "aq_only", "raw_only")
CR_TOKEN_MODES = ("vision_only", "vision_plus_prompt")


class CRaFTConfigError(ValueError):
    """A bad CRaFT hyperparameter: `field` is the `CRaFTConfig` field, `reason` what is wrong with its value."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field} {reason}")
        self.field = field
        self.reason = reason


def check_choice(field: str, value: object, choices: tuple[str, ...]) -> None:
    """Raise CRaFTConfigError naming `field` when `value` is not one of `choices`."""
    if value not in choices:
        raise CRaFTConfigError(field, f"must be one of {', '.join(choices)} (got {value!r})")


@dataclass(frozen=True)
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
    retention_fraction: float = 1.0
    """Fraction of each micro-batch whose retention loss and gradient are computed, in their own forward (an unbiased
    estimate, see `craft.cheap.retention_subset`); 1.0 = exact: the whole micro-batch, from the shared forward."""
    cache_anchor_features: bool = False
    """Compute each sample's anchor features once and reuse them (exact; only valid when a sample's inputs never
    change between draws, i.e. without data augmentation; see `craft.cheap.AnchorFeatureCache`)."""
    slack_margin: float = 0.0
    """Skip the retention gradient (and so the projection) on a step whose constraint is slack: lambda = 0 and the
    previous step's L_ret <= slack_margin x epsilon (see `craft.cheap.constraint_is_slack`); 0 = never skip (exact)."""

    def __post_init__(self) -> None:
        _require_number("retention_budget", self.retention_budget, minimum=0.0, inclusive=False)
        _require_number("dual_lr", self.dual_lr, minimum=0.0)
        _require_number("fixed_lambda", self.fixed_lambda, minimum=0.0)
        _require_number("initial_lambda", self.initial_lambda, minimum=0.0)
        _require_number("projection_delta", self.projection_delta, minimum=0.0, inclusive=False)
        check_choice("anchor_type", self.anchor_type, ANCHOR_TYPES)
        check_choice("cr_token_mode", self.cr_token_mode, CR_TOKEN_MODES)
        check_layer_index(self.anchor_layer_idx)
        _require_number("retention_fraction", self.retention_fraction, minimum=0.0, inclusive=False)
        if self.retention_fraction > 1.0:
            raise CRaFTConfigError("retention_fraction", f"must be <= 1 (got {self.retention_fraction})")
        _require_number("slack_margin", self.slack_margin, minimum=0.0)
        if self.slack_margin > 1.0:
            raise CRaFTConfigError("slack_margin", f"must be <= 1 (got {self.slack_margin})")
        for name in ("enable_projection", "enable_dual", "cache_anchor_features"):
            if not isinstance(getattr(self, name), bool):
                raise CRaFTConfigError(name, f"must be a boolean (got {getattr(self, name)!r})")


def check_layer_index(anchor_layer_idx: object) -> None:
    if anchor_layer_idx is not None and (isinstance(anchor_layer_idx, bool) or not isinstance(anchor_layer_idx, int)):
        raise CRaFTConfigError("anchor_layer_idx", f"must be an integer or None (got {anchor_layer_idx!r})")


def _require_number(field: str, value: object, minimum: float, inclusive: bool = True) -> None:
    """Reject non-numbers, booleans, NaN and infinities (which would poison lambda or the loss), and values below
    `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CRaFTConfigError(field, f"must be a finite number (got {value!r})")
    if value < minimum or (not inclusive and value == minimum):
        raise CRaFTConfigError(field, f"must be {'>=' if inclusive else '>'} {minimum:g} (got {value})")
