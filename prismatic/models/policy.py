"""The VLA-Adapter policy: Prismatic VLM + Bridge-Attention action head + proprio projector.

`forward` takes a `PolicyBatch` and returns normalised action chunks plus the VLM's hidden states, which CRaFT reads
its features from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prismatic.models.action_head import L1RegressionActionHead, ProprioProjector
from prismatic.models.batch import PolicyBatch
from prismatic.models.vlm import PrismaticVLM, VLMOutput, action_head_features
from prismatic.vla.constants import LIBERO_CONSTANTS, RobotConstants


@dataclass
class PolicyOutput:
    actions: torch.Tensor  # (B, chunk, action_dim), normalised
    vlm: VLMOutput


class VLAAdapterPolicy(nn.Module):
    """Everything that is trained or evaluated: `vlm` (LoRA-wrapped in training), `action_head`, `proprio_projector`."""

    def __init__(
        self,
        vlm: nn.Module,
        robot: RobotConstants = LIBERO_CONSTANTS,
        use_pro_version: bool = True,
        use_proprio: bool = True,
    ) -> None:
        super().__init__()
        base = unwrap_vlm(vlm)
        self.vlm = vlm
        self.robot = robot
        self.action_head = L1RegressionActionHead(
            llm_dim=base.llm_dim,
            action_dim=robot.action_dim,
            action_chunk=robot.action_chunk,
            num_blocks=base.num_llm_layers,
            use_pro_version=use_pro_version,
        )
        self.proprio_projector = ProprioProjector(base.llm_dim, robot.proprio_dim) if use_proprio else None

    @property
    def base_vlm(self) -> PrismaticVLM:
        return unwrap_vlm(self.vlm)

    @property
    def use_proprio(self) -> bool:
        return self.proprio_projector is not None

    def forward(self, batch: PolicyBatch, noise_seed: int | None = None) -> PolicyOutput:
        """Action chunks for `batch`; `noise_seed` seeds the action head's training noise (see the trainer)."""
        vlm_out = self.vlm(**batch.vlm_inputs())
        proprio_features = None
        if self.proprio_projector is not None:
            if batch.proprio is None:
                raise ValueError("this policy uses proprio (use_proprio=True) but the batch has no `proprio`")
            proprio = batch.proprio
            proprio_features = self.proprio_projector(
                proprio.reshape(proprio.shape[0], -1).to(vlm_out.hidden_states[0])
            )
        actions = self.action_head(action_head_features(vlm_out), proprio_features, noise_seed=noise_seed)
        return PolicyOutput(actions=actions, vlm=vlm_out)


def unwrap_vlm(vlm: nn.Module) -> PrismaticVLM:
    """The PrismaticVLM inside peft / DDP wrappers (or `vlm` itself)."""
    if isinstance(vlm, PrismaticVLM):
        return vlm
    if isinstance(vlm, nn.parallel.DistributedDataParallel):
        return unwrap_vlm(vlm.module)
    get_base_model = getattr(vlm, "get_base_model", None)
    if callable(get_base_model):
        return unwrap_vlm(get_base_model())
    raise TypeError(f"no PrismaticVLM inside {type(vlm).__name__}")
