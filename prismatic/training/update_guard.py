"""Blow-up guard: the size of the update `torch.optim.AdamW.step()` is about to apply, computed without applying it.

A bad step (a non-finite gradient, or `--learning_rate 1e10` writing weights of size 1e10) cannot be undone after
`optimizer.step()` without a backup of the parameters and the optimizer state, and at full model size that backup
does not fit in GPU memory. So the trainer predicts, then decides: `check_adamw_update` redoes AdamW's arithmetic for
the next step from the current `.grad`s and the optimizer state, one parameter at a time (temporaries the size of
that parameter), changes nothing, and returns global norms; `optimizer.step()` runs only if the check accepts them.

The arithmetic is AdamW's (torch/optim/adam.py with decoupled weight decay) in float32, so it agrees with any of
torch's implementations (for-loop, foreach, fused) to rounding, which is all a guard with a factor-sized threshold
needs. One host synchronisation, at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class UpdateCheck:
    """Global L2 norms over every parameter that has a gradient (the ones AdamW updates)."""

    update_norm: float  # ||p_new - p||
    param_norm: float  # ||p||
    new_param_norm: float  # ||p_new||

    @property
    def finite(self) -> bool:
        return all(math.isfinite(x) for x in (self.update_norm, self.param_norm, self.new_param_norm))

    @property
    def ratio(self) -> float:
        """||update|| / ||params||: inf for a non-zero update of all-zero parameters, 0 when both are zero."""
        if self.param_norm == 0:
            return 0.0 if self.update_norm == 0 else (math.inf if self.update_norm > 0 else math.nan)
        return self.update_norm / self.param_norm

    def acceptable(self, max_ratio: float | None) -> bool:
        """True when the update is finite and (if `max_ratio` is given) ratio <= max_ratio."""
        return self.finite and (max_ratio is None or self.ratio <= max_ratio)


def _check_supported(optimizer: torch.optim.Optimizer) -> None:
    if type(optimizer) not in (torch.optim.AdamW, torch.optim.Adam):
        raise ValueError(f"check_adamw_update models torch.optim.AdamW only, got {type(optimizer).__name__}")
    for index, group in enumerate(optimizer.param_groups):
        if type(optimizer) is torch.optim.Adam and not group.get("decoupled_weight_decay") and group["weight_decay"]:
            raise ValueError(f"param group {index}: Adam with coupled (L2) weight decay is not AdamW")
        for option in ("amsgrad", "maximize", "differentiable"):
            if group.get(option, False):
                raise ValueError(f"param group {index}: AdamW option {option}=True is not modelled")


def _float(value: float | torch.Tensor) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


@torch.no_grad()
def check_adamw_update(optimizer: torch.optim.Optimizer) -> UpdateCheck:
    """Norms of the update `optimizer.step()` (AdamW) would apply now; modifies nothing.

    Raises ValueError for optimizers or options it does not model. Parameters without a gradient are skipped, as
    AdamW skips them.
    """
    _check_supported(optimizer)
    total: torch.Tensor | None = None  # float64 [||delta||^2, ||p||^2, ||p_new||^2]
    for group in optimizer.param_groups:
        lr, wd, eps = _float(group["lr"]), group["weight_decay"], group["eps"]
        beta1, beta2 = (_float(b) for b in group["betas"])
        for tensor in group["params"]:
            if tensor.grad is None:
                continue
            # .get, not [...]: optimizer.state is a defaultdict and indexing would insert an empty state.
            state = optimizer.state.get(tensor) or {}
            dtype = torch.float64 if tensor.dtype == torch.float64 else torch.float32
            param, grad = tensor.detach().to(dtype), tensor.grad.detach().to(dtype)
            # The step count as a tensor on the parameter's device: fused and capturable AdamW keep it there, and
            # reading it with .item() would synchronise with the GPU once per parameter.
            step = torch.as_tensor(state.get("step", 0.0), dtype=torch.float64).to(param.device) + 1
            first_moment = state["exp_avg"].to(dtype).lerp(grad, 1 - beta1) if state else grad * (1 - beta1)
            second_moment = state["exp_avg_sq"].to(dtype) * beta2 if state else torch.zeros_like(grad)
            second_moment.addcmul_(grad, grad, value=1 - beta2)
            denom = second_moment.sqrt_().div_((1 - beta2**step).sqrt().to(dtype)).add_(eps)
            delta = first_moment.div_(denom).mul_((-lr / (1 - beta1**step)).to(dtype)).sub_(param, alpha=lr * wd)
            norms = torch.stack(
                [
                    torch.linalg.vector_norm(delta),
                    torch.linalg.vector_norm(param),
                    torch.linalg.vector_norm(delta + param),
                ]
            )
            squares = norms.double().square()
            total = squares if total is None else total + squares.to(total.device)
    if total is None:
        return UpdateCheck(0.0, 0.0, 0.0)
    update_norm, param_norm, new_param_norm = total.sqrt().tolist()  # the one host synchronisation
    return UpdateCheck(update_norm=update_norm, param_norm=param_norm, new_param_norm=new_param_norm)
