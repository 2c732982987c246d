"""CRaFT glue for the VLA-Adapter policy: token masks, retention features, and the frozen anchor theta_0 (used by
training and by offline evaluation).

* With LoRA the anchor is the same model with its adapters disabled (peft keeps the initial action queries as the
  frozen original of `modules_to_save`): no weight copy, no weight swapping.
* With full fine-tuning the anchor is a frozen copy of the initial VLM (one more VLM in memory: ~5 GB in fp32 /
  2.5 GB in bf16 at full size).
The anchor forward runs without gradients and stops at the deepest layer the chosen features need. Without image
augmentation a frame's f~ never changes, so `--craft_cache_anchor_features True` computes it once per frame.
"""

from __future__ import annotations

import copy

import torch
from peft import PeftModel
from torch import nn

from craft import AnchorFeatureCache, CRaFTConfig, TokenMasks, deepest_hidden_state_index, extract_features
from prismatic.models.batch import PolicyBatch
from prismatic.models.vlm import PrismaticVLM, VLMOutput


def token_masks(out: VLMOutput) -> TokenMasks:
    """Vision tokens (the patches after the first prompt token), prompt tokens and the 64 action queries."""
    batch_size, length = out.attention_mask.shape
    positions = torch.arange(length, device=out.attention_mask.device)
    vision = ((positions >= 1) & (positions <= out.num_patches)).expand(batch_size, length)
    action_query = torch.zeros(batch_size, length, dtype=torch.bool, device=positions.device)
    action_query.scatter_(1, out.query_positions + out.num_patches, True)
    return TokenMasks(vision=vision, prompt=out.prompt_mask, action_query=action_query)


def retention_features(out: VLMOutput, config: CRaFTConfig, num_layers: int) -> torch.Tensor:
    """Pooled [C_R; C_AQ] features of a forward (fp32)."""
    return extract_features(
        out.hidden_states,
        token_masks(out),
        anchor_type=config.anchor_type,
        anchor_layer_idx=config.anchor_layer_idx,
        cr_token_mode=config.cr_token_mode,
        num_layers=num_layers,
    )


class Anchor:
    """Computes the anchor features f~ of the initial model on the same inputs as the training forward; with
    `config.cache_anchor_features`, each frame's f~ once (by its (dataset, episode, frame) key)."""

    def __init__(self, vlm: nn.Module, config: CRaFTConfig) -> None:
        self.config = config
        self.cache = AnchorFeatureCache() if config.cache_anchor_features else None
        if isinstance(vlm, PeftModel):
            self.vlm: nn.Module = vlm
            self.frozen_copy = False
            base = vlm.get_base_model()
        else:
            assert isinstance(vlm, PrismaticVLM)
            self.vlm = copy.deepcopy(vlm).requires_grad_(False).eval()
            self.frozen_copy = True
            base = vlm
        self.num_layers = base.num_llm_layers
        self.deepest = deepest_hidden_state_index(
            self.num_layers, anchor_type=config.anchor_type, anchor_layer_idx=config.anchor_layer_idx
        )

    @torch.no_grad()
    def forward(self, batch: PolicyBatch) -> VLMOutput:
        """The initial model's hidden states on `batch`, up to the deepest layer the features need."""
        inputs = {**batch.vlm_inputs(), "stop_after_layer": self.deepest}
        if self.frozen_copy:
            return self.vlm(**inputs)
        assert isinstance(self.vlm, PeftModel)
        with self.vlm.disable_adapter():
            return self.vlm(**inputs)

    @torch.no_grad()
    def features(self, batch: PolicyBatch, use_cache: bool = True) -> torch.Tensor:
        """f~ of the initial model on `batch` (the anchor forward stops at the deepest layer the features need),
        from the cache for frames already seen when caching is on."""
        if self.cache is None or not use_cache:
            return retention_features(self.forward(batch), self.config, self.num_layers)
        device = batch.input_ids.device
        return self.cache.features(
            batch.frame_keys(),
            lambda rows: retention_features(self.forward(batch.select(rows)), self.config, self.num_layers),
            device,
        )
