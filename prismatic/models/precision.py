"""Precision policy of a run: frozen weights in bf16 or fp32, trainable weights and optimizer state in fp32.

VLA-Adapter's reference loads the whole VLM in bf16 and trains everything in bf16 (LoRA, head, AdamW moments). Here
only the weights that never change are stored in bf16 (`--base_precision bf16`, the default on CUDA): the frozen LLM
and ViT weights under LoRA, the frozen original of the action queries, CRaFT's frozen anchor copy in full
fine-tuning. Trainable parameters (LoRA matrices, action queries, action head, proprio projector, every weight of a
full fine-tune) stay fp32 masters with fp32 gradients and AdamW moments. The forward runs under bf16 autocast, as
before: with bf16 frozen weights autocast has nothing left to re-cast, so the frozen model costs 2 bytes per weight
instead of 4 + 2.

Buffers (rotary `inv_freq`, position tables) are never cast: only parameters are.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

BASE_PRECISIONS = {"bf16": torch.bfloat16, "fp32": torch.float32}
MERGED_DTYPES = BASE_PRECISIONS  # `--merged_dtype`: released checkpoints are bf16
AUTO = "auto"


def resolve_base_precision(flag: str, device: torch.device) -> torch.dtype:
    """`--base_precision` -> the dtype of frozen weights: auto = bf16 on CUDA, fp32 elsewhere (CPU bf16 matmuls are
    slower than fp32 on most CPUs; bf16 there is a memory saving, chosen explicitly)."""
    if flag == AUTO:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if flag not in BASE_PRECISIONS:
        raise ValueError(f"--base_precision must be auto, bf16 or fp32 (got {flag!r})")
    return BASE_PRECISIONS[flag]


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float32: "fp32", torch.float16: "fp16"}.get(dtype, str(dtype))


@dataclass(frozen=True)
class Precision:
    """Where a run computes and what it stores: the frozen weights' dtype and the autocast it runs under."""

    device: torch.device
    frozen_dtype: torch.dtype

    @classmethod
    def from_flag(cls, flag: str, device: torch.device) -> Precision:
        return cls(device, resolve_base_precision(flag, device))

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """bf16 on CUDA (the reference's training precision); on CPU only with bf16 frozen weights, which fp32
        activations and fp32 trainable weights could not otherwise meet in one matmul."""
        if self.device.type == "cuda" or self.frozen_dtype == torch.bfloat16:
            return torch.bfloat16
        return None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def describe(self) -> str:
        autocast = dtype_name(self.autocast_dtype) if self.autocast_dtype is not None else "off"
        return f"frozen weights {dtype_name(self.frozen_dtype)}, trainable fp32, autocast {autocast}"


def store_frozen_weights(module: nn.Module, dtype: torch.dtype) -> int:
    """Cast, in place, every floating-point parameter of `module` that does not require grad to `dtype`; returns how
    many elements were cast. Trainable parameters and all buffers keep their dtype."""
    cast = 0
    with torch.no_grad():
        for param in module.parameters():
            if not param.requires_grad and param.is_floating_point() and param.dtype != dtype:
                param.data = param.data.to(dtype)
                cast += param.numel()
    return cast


def parameter_bytes_by_dtype(module: nn.Module, trainable: bool | None = None) -> dict[str, int]:
    """Bytes of `module`'s parameters (shared ones once) per dtype name; `trainable` filters on requires_grad."""
    totals: Counter[str] = Counter()
    for param in module.parameters():
        if trainable is None or param.requires_grad == trainable:
            totals[dtype_name(param.dtype)] += param.numel() * param.element_size()
    return dict(totals)


def cast_floating(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A state dict with every floating-point tensor in `dtype` (integer tensors untouched)."""
    return {key: value.to(dtype) if value.is_floating_point() else value for key, value in state.items()}
