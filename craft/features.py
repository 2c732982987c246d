"""Anchor features f = [Pool(C_R^(m)); Pool(C_AQ^(M))] from a model's hidden states.

Hidden states come as a sequence of L + 1 tensors (B, S, D): index 0 is the embedding output, index i the output of
layer i, index L the last layer. C_R^(m) are the layer-m states of the "raw" tokens (vision, optionally plus prompt),
C_AQ^(M) the last-layer states of the action-query tokens. Pooling is a masked mean computed in fp32, so the features
are fp32 whatever the model's dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from craft.config import ANCHOR_TYPES, CR_TOKEN_MODES, CRaFTConfigError, check_choice, check_layer_index


@dataclass(frozen=True)
class TokenMasks:
    """Boolean (B, S) masks marking each sample's vision, prompt and action-query tokens (padding is in none)."""

    vision: torch.Tensor
    prompt: torch.Tensor
    action_query: torch.Tensor

    def raw_tokens(self, cr_token_mode: str) -> torch.Tensor:
        """The mask of the tokens that make up C_R for a token mode."""
        check_choice("cr_token_mode", cr_token_mode, CR_TOKEN_MODES)
        if cr_token_mode == "vision_plus_prompt":
            return self.vision.bool() | self.prompt.bool()
        return self.vision.bool()


def resolve_layer_index(anchor_layer_idx: int | None, num_layers: int) -> int:
    """Hidden-state index of layer m: None -> num_layers // 2, negative -> num_layers + 1 + m (-1 = last layer)."""
    if num_layers < 1:
        raise ValueError(f"a model needs at least one layer to take anchor features from (got num_layers={num_layers})")
    if anchor_layer_idx is None:
        return num_layers // 2
    check_layer_index(anchor_layer_idx)
    if not -(num_layers + 1) <= anchor_layer_idx <= num_layers:
        raise CRaFTConfigError(
            "anchor_layer_idx",
            f"{anchor_layer_idx} is out of range for a model with {num_layers} layers "
            f"(valid: 0..{num_layers} or {-(num_layers + 1)}..-1)",
        )
    return anchor_layer_idx if anchor_layer_idx >= 0 else num_layers + 1 + anchor_layer_idx


def deepest_hidden_state_index(num_layers: int, *, anchor_type: str, anchor_layer_idx: int | None) -> int:
    """The deepest hidden-state index the features need, so the anchor forward can stop after that layer."""
    _check_anchor_type(anchor_type)
    if anchor_type == "raw_only":
        return resolve_layer_index(anchor_layer_idx, num_layers)
    return num_layers


def masked_mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the masked tokens of each sample, (B, S, D) x (B, S) -> (B, D) in fp32.

    Excluded positions are zeroed before summing, so NaN/Inf in padding cannot leak in. A sample with no selected
    token pools to zeros (the same for the model and its anchor, so it adds no drift).
    """
    if hidden.dim() != 3 or mask.shape != hidden.shape[:2]:
        raise ValueError(f"expected hidden (B, S, D) and mask (B, S), got {tuple(hidden.shape)}, {tuple(mask.shape)}")
    keep = mask.to(device=hidden.device, dtype=torch.bool)
    summed = hidden.float().masked_fill(~keep.unsqueeze(-1), 0.0).sum(dim=1)
    counts = keep.sum(dim=1, keepdim=True).clamp_min(1).to(summed.dtype)
    return summed / counts


def extract_features(
    hidden_states: Sequence[torch.Tensor],
    masks: TokenMasks,
    *,
    anchor_type: str = "concat",
    anchor_layer_idx: int | None = None,
    cr_token_mode: str = "vision_only",
    num_layers: int | None = None,
) -> torch.Tensor:
    """Features (B, F) in fp32: concat [Pool(C_R^(m)); Pool(C_AQ^(M))], aq_only Pool(C_AQ^(M)), raw_only Pool(C_R^(m)).

    `num_layers` defaults to len(hidden_states) - 1; pass it when the hidden states were cut short (anchor forward
    stopped at `deepest_hidden_state_index`), so that m resolves against the full model.
    """
    _check_anchor_type(anchor_type)
    total_layers = len(hidden_states) - 1 if num_layers is None else num_layers
    needed = deepest_hidden_state_index(total_layers, anchor_type=anchor_type, anchor_layer_idx=anchor_layer_idx)
    if needed >= len(hidden_states):
        raise ValueError(f"features need hidden state {needed} but only {len(hidden_states)} were given")
    parts: list[torch.Tensor] = []
    if anchor_type in ("concat", "raw_only"):
        layer = resolve_layer_index(anchor_layer_idx, total_layers)
        parts.append(masked_mean_pool(hidden_states[layer], masks.raw_tokens(cr_token_mode)))
    if anchor_type in ("concat", "aq_only"):
        parts.append(masked_mean_pool(hidden_states[total_layers], masks.action_query))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


def _check_anchor_type(anchor_type: str) -> None:
    """Fail early on a misspelt anchor type instead of silently producing empty features."""
    check_choice("anchor_type", anchor_type, ANCHOR_TYPES)
