"""Action / proprio normalisation (BOUNDS_Q99 and BOUNDS) and its inverse, for numpy arrays and torch tensors.

    x' = clip(2 (x - lo) / (hi - lo + 1e-8) - 1, -1, 1)      on masked dims, where lo/hi = q01/q99 (or min/max)
    x  = 0.5 (x' + 1) (hi - lo + 1e-8) + lo                   the inverse, on the same dims
Unmasked dims (the LIBERO gripper action) pass through unchanged; dims whose min == max (unused dims) become 0,
as in the reference pipeline. Statistics are read as float64 and the span `hi - lo + 1e-8` is formed in float64 and
rounded once to the data's dtype, as the reference does (its statistics are float64 numpy arrays).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np
import torch

from prismatic.vla.constants import NormalizationType

EPS = 1e-8
ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def normalization_params(
    stats: Mapping[str, Any], kind: NormalizationType
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(lo, hi, mask of normalised dims, mask of degenerate dims) for a statistics entry; lo/hi in float64."""
    lo_key, hi_key = ("q01", "q99") if NormalizationType(kind) == NormalizationType.BOUNDS_Q99 else ("min", "max")
    if lo_key not in stats or hi_key not in stats:
        raise KeyError(
            f"statistics lack {lo_key!r}/{hi_key!r}, needed for {NormalizationType(kind).value} normalisation"
        )
    lo = np.asarray(stats[lo_key], dtype=np.float64)
    hi = np.asarray(stats[hi_key], dtype=np.float64)
    mask = np.asarray(stats.get("mask", np.ones_like(lo, dtype=bool)), dtype=bool)
    if "min" in stats and "max" in stats:
        degenerate = np.asarray(stats["min"], np.float64) == np.asarray(stats["max"], np.float64)
    else:
        degenerate = lo == hi
    return lo, hi, mask, degenerate


def _as(like: ArrayT, value: np.ndarray) -> ArrayT:
    if isinstance(like, torch.Tensor):
        dtype = torch.bool if value.dtype == bool else like.dtype
        return torch.as_tensor(value, dtype=dtype, device=like.device)
    return value


def _where(cond: ArrayT, if_true: ArrayT, if_false: ArrayT) -> ArrayT:
    if isinstance(if_true, torch.Tensor):
        return torch.where(cond, if_true, if_false)
    return np.where(cond, if_true, if_false)


def normalize(
    values: ArrayT, stats: Mapping[str, Any], kind: NormalizationType = NormalizationType.BOUNDS_Q99
) -> ArrayT:
    """Map raw actions/proprio to [-1, 1] with the dataset statistics (last axis = dimensions)."""
    lo, hi, mask, degenerate = normalization_params(stats, kind)
    lo_x, span_x = _as(values, lo), _as(values, hi - lo + EPS)
    scaled = 2 * (values - lo_x) / span_x - 1
    scaled = scaled.clamp(-1, 1) if isinstance(scaled, torch.Tensor) else np.clip(scaled, -1, 1)
    out = _where(_as(values, mask), scaled, values)
    out = _where(_as(values, degenerate), out * 0, out)
    return out if isinstance(out, torch.Tensor) else out.astype(np.asarray(values).dtype, copy=False)


def unnormalize(
    values: ArrayT, stats: Mapping[str, Any], kind: NormalizationType = NormalizationType.BOUNDS_Q99
) -> ArrayT:
    """Inverse of `normalize` on the masked dims (values outside [-1, 1] extrapolate linearly)."""
    lo, hi, mask, _ = normalization_params(stats, kind)
    lo_x, span_x = _as(values, lo), _as(values, hi - lo + EPS)
    restored = 0.5 * (values + 1) * span_x + lo_x
    out = _where(_as(values, mask), restored, values)
    return out if isinstance(out, torch.Tensor) else out.astype(np.asarray(values).dtype, copy=False)
