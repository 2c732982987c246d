"""Process-group setup for `torchrun` (NCCL on GPUs, gloo on CPU) and single-process runs, plus RNG state."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

Result = TypeVar("Result")


@dataclass(frozen=True)
class DistContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistContext:
    """Join the process group `torchrun` describes (env vars), or run as a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_mean(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Mean of a tensor over ranks (returned, the input is not modified)."""
    if not ctx.distributed:
        return values
    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / ctx.world_size


def broadcast_parameters(module: torch.nn.Module, ctx: DistContext) -> None:
    """Give every rank rank 0's parameters (what DDP does when it wraps a module), for a module used without DDP."""
    if not ctx.distributed:
        return
    with torch.no_grad():
        for param in module.parameters():
            dist.broadcast(param.data, src=0)


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """`obj` from rank 0 on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(
    fn: Callable[[], Result], ctx: DistContext, errors: tuple[type[BaseException], ...] = (Exception,)
) -> Result:
    """Run `fn` on rank 0 only and give every rank its result, or make every rank raise its error: a check that
    fails on rank 0 then stops all processes with the same message instead of leaving the others waiting."""
    result: Any = None
    error: BaseException | None = None
    if ctx.is_main:
        try:
            result = fn()
        except errors as err:
            error = err
    result, error = broadcast_object((result, error), ctx)
    if error is not None:
        raise error
    return result


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's `obj`, on every rank (ordered by rank)."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """This process's random generator states (for exact resume), as tensors, numbers and lists only, so that a
    checkpoint can be read back with `torch.load(weights_only=True)`."""
    version, python_state, gauss = random.getstate()
    _, key, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(python_state), "gauss": gauss},
        "numpy": {
            "key": torch.from_numpy(key.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["key"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
