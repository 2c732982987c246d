"""Linear CKA: how much of a representation's similarity structure survives fine-tuning, as one number per layer.

Used next to the retention loss to report drift: the loss measures distance in feature space, CKA whether samples
are still arranged the same way (invariant to rotation and isotropic scale of either side).
"""

from __future__ import annotations

from typing import Any

import torch


def linear_cka(first: Any, second: Any) -> float:
    """Linear CKA of two feature matrices (n samples x d1, n x d2; tensors or arrays): 1 for identical up to rotation
    and scale, near 0 for unrelated features.

    Features that do not vary over the samples (e.g. zero-initialised action queries at the embedding layer) have
    no similarity structure: CKA is then 1 if both sides are constant and 0 if only one is.
    """
    first = torch.as_tensor(first, dtype=torch.float64)
    second = torch.as_tensor(second, dtype=torch.float64)
    if first.dim() != 2 or second.dim() != 2 or first.shape[0] != second.shape[0] or first.shape[0] < 2:
        raise ValueError(f"CKA needs the same n >= 2 samples in both matrices, got {first.shape} and {second.shape}")
    first = first - first.mean(0, keepdim=True)
    second = second - second.mean(0, keepdim=True)
    cross = torch.linalg.matrix_norm(second.T @ first) ** 2
    denom = torch.linalg.matrix_norm(first.T @ first) * torch.linalg.matrix_norm(second.T @ second)
    if denom > 0:
        return float(cross / denom)
    return 1.0 if not first.any() and not second.any() else 0.0
