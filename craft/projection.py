"""One-sided (A-GEM style) conflict-aware projection of the action gradient, per parameter tensor.

Tensor i conflicts iff it has both gradients and <g_act_i, g_ret_i> < 0. Only conflicting tensors are projected:
g_act_i <- g_act_i - <g_act_i, g_ret_i> / (||g_ret_i||^2 + delta) * g_ret_i. Unlike PCGrad, g_ret is never projected.

Everything is computed on the device for all tensors at once (stacked per-tensor dot products, fused norms, one
fused multiply-add), with the conflict decision folded into the coefficients instead of Python branches, so the
projection never synchronises with the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

DEFAULT_PROJECTION_DELTA = 1e-8


@dataclass(frozen=True)
class ProjectionResult:
    """Projected action gradients and the on-device conflict statistics of the gradients given."""

    act_grads: list[torch.Tensor]
    """g~_act per tensor: projected where conflicting, otherwise the input tensor's values unchanged."""
    dots: torch.Tensor
    """(n,) <g_act_i, g_ret_i> before projection (0 for tensors missing a gradient)."""
    conflicting: torch.Tensor
    """(n,) bool: has both gradients and a negative dot."""
    num_conflicting: torch.Tensor
    """int64 scalar: number of conflicting tensors."""
    num_both: torch.Tensor
    """int64 scalar: number of tensors that have both gradients."""

    @property
    def conflict_ratio(self) -> torch.Tensor:
        """Conflicting / both as an fp32 scalar tensor (0 when no tensor has both gradients)."""
        return self.num_conflicting.float() / self.num_both.clamp_min(1).float()


def project_conflicting(
    act_grads: Sequence[torch.Tensor],
    ret_grads: Sequence[torch.Tensor],
    *,
    has_both: torch.Tensor | None = None,
    delta: float = DEFAULT_PROJECTION_DELTA,
    enabled: bool = True,
    inplace: bool = False,
) -> ProjectionResult:
    """Detect conflicts per tensor and, if `enabled`, project the conflicting action gradients.

    `act_grads[i]` and `ret_grads[i]` must share a shape; a missing gradient is passed as zeros and excluded via
    `has_both` (bool (n,), default: every tensor has both). With `enabled=False` the action gradients are returned
    untouched but the statistics are the true ones. With `inplace=True` the projection writes into `act_grads`.
    """
    if len(act_grads) != len(ret_grads):
        raise ValueError(f"got {len(act_grads)} action gradients but {len(ret_grads)} retention gradients")
    if delta <= 0:
        raise ValueError(f"the projection delta must be > 0 (got {delta})")
    for index, (act, ret) in enumerate(zip(act_grads, ret_grads, strict=True)):
        if act.shape != ret.shape:
            raise ValueError(
                f"tensor {index}: action gradient shape {tuple(act.shape)} != retention {tuple(ret.shape)}"
            )
    if not act_grads:
        empty = torch.zeros(0)
        zero = torch.zeros((), dtype=torch.int64)
        return ProjectionResult([], empty, empty.bool(), zero, zero.clone())

    device = act_grads[0].device
    pairs = zip(act_grads, ret_grads, strict=True)
    dots = torch.stack([torch.dot(act.reshape(-1), ret.reshape(-1)) for act, ret in pairs])
    both = torch.ones(len(act_grads), dtype=torch.bool, device=device) if has_both is None else has_both.to(device)
    if both.shape != dots.shape:
        raise ValueError(f"has_both must have shape ({len(act_grads)},), got {tuple(both.shape)}")
    conflicting = both & (dots < 0)

    projected = list(act_grads) if inplace or not enabled else [act.clone() for act in act_grads]
    if enabled:
        ret_sq_norms = torch.stack(torch._foreach_norm(list(ret_grads))).square()
        coefficients = torch.where(conflicting, dots / (ret_sq_norms + delta), torch.zeros_like(dots))
        # A zero coefficient leaves a non-conflicting tensor exactly as it was (g - 0 * r == g for finite r).
        torch._foreach_addcmul_(projected, list(ret_grads), list(coefficients.unbind(0)), value=-1.0)
    return ProjectionResult(
        act_grads=projected,
        dots=dots,
        conflicting=conflicting,
        num_conflicting=conflicting.sum(),
        num_both=both.sum(),
    )
