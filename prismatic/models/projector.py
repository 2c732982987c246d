"""Fused GELU MLP projector ("no-align+fused-gelu-mlp"): vision features -> LLM embedding space."""

from __future__ import annotations

import torch
from torch import nn


class FusedMLPProjector(nn.Module):
    """Linear(Dv, 4 Dv) - GELU - Linear(4 Dv, D) - GELU - Linear(D, D), HF names `fc1`, `fc2`, `fc3`."""

    def __init__(self, vision_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
        self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
        self.fc3 = nn.Linear(llm_dim, llm_dim)
        self.act_fn1 = nn.GELU()
        self.act_fn2 = nn.GELU()

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act_fn2(self.fc2(self.act_fn1(self.fc1(patches)))))
