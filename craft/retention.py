"""Retention loss L_ret = MSE(f, f~): how far the model's features drifted from those of its frozen initial state."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RetentionResult:
    """The fp32 scalar loss and a bool scalar tensor that is True when the loss is NaN or Inf.

    The flag stays on the device, so computing it costs no host synchronisation; the step reads it once per
    micro-batch to decide whether the retention gradient may be used.
    """

    loss: torch.Tensor
    nonfinite: torch.Tensor


def retention_loss(features: torch.Tensor, anchor_features: torch.Tensor) -> RetentionResult:
    """Mean squared error over batch and feature dims, in fp32 whatever the inputs' dtype; no gradient to the anchor."""
    if features.shape != anchor_features.shape:
        raise ValueError(
            f"features {tuple(features.shape)} and anchor features {tuple(anchor_features.shape)} must have one shape"
        )
    anchor = anchor_features.detach().to(device=features.device, dtype=torch.float32)
    loss = torch.nn.functional.mse_loss(features.float(), anchor, reduction="mean")
    return RetentionResult(loss=loss, nonfinite=~torch.isfinite(loss.detach()))
