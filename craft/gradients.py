"""Accumulation of the action and retention gradients of one optimizer step, and their all-reduce across ranks.

Both gradient sets, the per-parameter "received at least once" flags, the micro-batch counts and a few named scalar
sums (e.g. the retention loss) live in ONE preallocated flat buffer, with per-parameter views into it:

    [ act grads (P) | ret grads (P) | has_act (n) | has_ret (n) | act count | ret count | scalars (k) ]

so memory is O(trainable parameters), adding a micro-batch is one fused add per set, and the whole step state crosses
ranks in a single `torch.distributed.all_reduce`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

GradientList = Sequence[torch.Tensor | None]


def distributed_world_size(group: dist.ProcessGroup | None = None) -> int:
    """The number of ranks to average over: 1 unless torch.distributed is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(group)
    return 1


@dataclass(frozen=True)
class AccumulatedTotals:
    """The step's totals after `finalize`: on-device tensors, summed over micro-batches and (if reduced) ranks."""

    has_act: torch.Tensor
    """(n,) bool: the parameter received an action gradient in some micro-batch on some rank."""
    has_ret: torch.Tensor
    """(n,) bool: the same for the retention gradient."""
    act_count: torch.Tensor
    """Scalar: micro-batches that contributed an action gradient (over all ranks if reduced)."""
    ret_count: torch.Tensor
    """Scalar: micro-batches that contributed a retention gradient (over all ranks if reduced)."""
    scalars: dict[str, torch.Tensor]
    """Named scalar sums added with `add_scalar`."""
    world_size: int
    """Ranks the totals were summed over (1 when not reduced)."""


class GradientAccumulator:
    """Sums the action and retention gradients of a fixed parameter list over micro-batches, then averages them.

    Use: `add(...)` / `add_scalar(...)` per micro-batch, `finalize(sync=...)` once per optimizer step (sums across
    ranks, then divides each gradient set by its global micro-batch count, i.e. sum / (K * world size) when every rank
    contributed K micro-batches), read `act_grads` / `ret_grads`, then `reset()`.
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        *,
        scalar_names: Sequence[str] = (),
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("the gradient accumulator needs at least one parameter")
        devices = {p.device for p in self.params}
        if len(devices) != 1:
            raise ValueError(f"all parameters must live on one device, got {sorted(str(d) for d in devices)}")
        if len(set(scalar_names)) != len(scalar_names):
            raise ValueError(f"scalar names must be unique, got {list(scalar_names)}")
        self.dtype = dtype
        self.device = devices.pop()
        num_params = len(self.params)
        sizes = [p.numel() for p in self.params]
        total = sum(sizes)
        self._num_scalars = len(scalar_names)
        self._buffer = torch.zeros(2 * total + 2 * num_params + 2 + self._num_scalars, dtype=dtype, device=self.device)

        self.act_flat = self._buffer[:total]
        self.ret_flat = self._buffer[total : 2 * total]
        self.act_grads = [v.view(p.shape) for v, p in zip(self.act_flat.split(sizes), self.params, strict=True)]
        self.ret_grads = [v.view(p.shape) for v, p in zip(self.ret_flat.split(sizes), self.params, strict=True)]
        tail = self._buffer[2 * total :]
        self._host_tail = tail[: 2 * num_params + 2]
        self._has_act_flags = tail[:num_params]
        self._has_ret_flags = tail[num_params : 2 * num_params]
        self._act_count = tail[2 * num_params]
        self._ret_count = tail[2 * num_params + 1]
        self._scalars = {name: tail[2 * num_params + 2 + i] for i, name in enumerate(scalar_names)}

        self._has_act = [False] * num_params
        self._has_ret = [False] * num_params
        self._num_act = 0
        self._num_ret = 0
        self._finalized = False

    @property
    def num_params(self) -> int:
        """Number of parameter tensors tracked."""
        return len(self.params)

    @property
    def num_microbatches(self) -> int:
        """Micro-batches added on this rank since the last reset (those with an action gradient)."""
        return self._num_act

    @property
    def num_retention_microbatches(self) -> int:
        """Micro-batches on this rank that contributed a retention gradient since the last reset."""
        return self._num_ret

    def add(self, act_grads: GradientList | None = None, ret_grads: GradientList | None = None) -> None:
        """Add one micro-batch's gradients (as from `torch.autograd.grad(..., allow_unused=True)`; None = unused).

        Passing None for a whole set means the micro-batch contributes nothing to that set (nor to its count).
        """
        self._require_accumulating()
        if act_grads is not None:
            self._add_set(self.act_grads, act_grads, self._has_act)
            self._num_act += 1
        if ret_grads is not None:
            self._add_set(self.ret_grads, ret_grads, self._has_ret)
            self._num_ret += 1

    def add_scalar(self, name: str, value: torch.Tensor | float) -> None:
        """Add to a named scalar sum, on the device (no host synchronisation)."""
        self._require_accumulating()
        if name not in self._scalars:
            raise KeyError(f"unknown scalar {name!r}; declared: {list(self._scalars)}")
        slot = self._scalars[name]
        slot.add_(value.detach().to(device=slot.device, dtype=slot.dtype) if isinstance(value, torch.Tensor) else value)

    def finalize(self, *, sync: bool = True, group: dist.ProcessGroup | None = None) -> AccumulatedTotals:
        """Sum across ranks (one all-reduce, if `sync` and more than one rank) and average each gradient set.

        Each set is divided by its global micro-batch count, so with equal counts per rank the result is
        sum / (K * world size): the gradient of the mean loss over all micro-batches of all ranks.
        """
        self._require_accumulating()
        if self._num_act == 0 and self._num_ret == 0:
            raise RuntimeError("finalize() called before any micro-batch was added")
        host_state = [*map(float, self._has_act), *map(float, self._has_ret), self._num_act, self._num_ret]
        self._host_tail.copy_(torch.tensor(host_state, dtype=self.dtype))
        world_size = distributed_world_size(group) if sync else 1
        if world_size > 1:
            dist.all_reduce(self._buffer, op=dist.ReduceOp.SUM, group=group)
        self.act_flat.div_(self._act_count.clamp_min(1))
        self.ret_flat.div_(self._ret_count.clamp_min(1))
        self._finalized = True
        return AccumulatedTotals(
            has_act=self._has_act_flags > 0,
            has_ret=self._has_ret_flags > 0,
            act_count=self._act_count,
            ret_count=self._ret_count,
            scalars=dict(self._scalars),
            world_size=world_size,
        )

    def reset(self) -> None:
        """Zero everything for the next optimizer step."""
        self._buffer.zero_()
        self._has_act = [False] * self.num_params
        self._has_ret = [False] * self.num_params
        self._num_act = 0
        self._num_ret = 0
        self._finalized = False

    def _add_set(self, views: list[torch.Tensor], grads: GradientList, received: list[bool]) -> None:
        """Fused add of the non-None gradients into their views; records which parameters received one."""
        if len(grads) != self.num_params:
            raise ValueError(f"expected {self.num_params} gradients, got {len(grads)}")
        present = [(i, grad) for i, grad in enumerate(grads) if grad is not None]
        for index, grad in present:
            if grad.shape != views[index].shape:
                raise ValueError(
                    f"gradient {index} has shape {tuple(grad.shape)}, its parameter {tuple(views[index].shape)}"
                )
        if present:
            torch._foreach_add_([views[i] for i, _ in present], [grad for _, grad in present])
        for index, _ in present:
            received[index] = True

    def _require_accumulating(self) -> None:
        """Adding after finalize would mix averaged and summed values; reset() must come first."""
        if self._finalized:
            raise RuntimeError("the accumulator was finalized; call reset() before adding the next step")
