"""The Prismatic VLM (fused vision backbone + projector + Qwen2 body) with VLA-Adapter's ActionQuery tokens.

Sequence layout (KEEP, for checkpoint compatibility): the projected patches of all images are inserted right after
the first prompt token, and the 64 action-query positions of `input_ids` carry the learned `action_queries`
embeddings instead of token embeddings:

    [prompt token 0, patches (256 * n_images), prompt tokens 1.., 64 action queries, padding]

Only hidden states are computed: the LLM's 151,936-way vocabulary head is never applied.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM

from prismatic.models.presets import VLMPreset
from prismatic.models.projector import FusedMLPProjector
from prismatic.models.vision import FusedVisionBackbone
from prismatic.vla.constants import NUM_ACTION_QUERIES


def qwen2_config(preset: VLMPreset, attn_implementation: str = "sdpa") -> Qwen2Config:
    spec = preset.llm
    text = spec.text_config()
    for key in ("model_type", "torch_dtype"):
        text.pop(key)
    config = Qwen2Config(**text)
    config._attn_implementation = attn_implementation
    return config


@dataclass
class VLMOutput:
    """Hidden states of every LLM layer plus where things sit in the multimodal sequence."""

    hidden_states: tuple[torch.Tensor, ...]  # L + 1 tensors (B, S, D): embeddings, then each layer (last normed)
    num_patches: int  # P = 256 * n_images, inserted after the first prompt token
    query_positions: torch.Tensor  # (B, 64) positions of the action queries in `input_ids`
    attention_mask: torch.Tensor  # (B, S) multimodal attention mask (1 = real token)
    prompt_mask: torch.Tensor  # (B, S) True on prompt tokens (not patches, queries or padding)


def llm_attention_mask(mask: torch.Tensor) -> torch.Tensor | None:
    """The mask to hand the LLM: None when every row is real tokens followed only by padding (right padding, or none).

    Causal attention alone then gives every real token exactly the context the mask would (a token never sees the
    padding after it), so the outputs at real positions are the same, and SDPA may take its flash kernel, which an
    explicit mask rules out. Padding positions see different context, but nothing reads them: the action head and
    CRaFT's features take patches, prompt tokens and action queries only. Other layouts keep the mask.
    """
    if mask.is_meta:  # a shape-only forward (the memory model) cannot read the mask; it runs unpadded batches
        return None
    if mask.shape[1] < 2 or bool((mask[:, 1:] <= mask[:, :-1]).all()):
        return None
    return mask


class _StopForwardSignal(Exception):  # noqa: N818 (control flow, not an error)
    """Raised by a hook to end the LLM forward once the needed layer has run."""


class PrismaticVLM(nn.Module):
    """DINOv2+SigLIP -> fused GELU MLP -> Qwen2, exposing per-layer hidden states for the action head."""

    def __init__(self, preset: VLMPreset, num_images: int = 1, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        self.preset = preset
        self.vision_backbone = FusedVisionBackbone(preset.dino, preset.siglip, preset.image_size, num_images)
        self.projector = FusedMLPProjector(self.vision_backbone.embed_dim, preset.llm.hidden_size)
        self.language_model = Qwen2ForCausalLM(qwen2_config(preset, attn_implementation))
        self.action_queries = nn.Embedding(NUM_ACTION_QUERIES, preset.llm.hidden_size)
        nn.init.zeros_(self.action_queries.weight)

    @property
    def llm_dim(self) -> int:
        return self.preset.llm.hidden_size

    @property
    def num_llm_layers(self) -> int:
        return self.preset.llm.num_hidden_layers

    def set_num_images(self, num_images: int) -> None:
        self.vision_backbone.set_num_images(num_images)

    def num_patches(self) -> int:
        return self.vision_backbone.num_patches_per_image * self.vision_backbone.num_images

    def unused_parameter_names(self) -> list[str]:
        """Parameters no forward ever reaches: the last block of each ViT, their final norms / pooling heads, and
        the LM head (tied to the embeddings, which are trained through the prompt tokens)."""
        names = []
        for attr in ("featurizer", "fused_featurizer"):
            vit = getattr(self.vision_backbone, attr)
            last = len(vit.blocks) - 1
            for name, _ in vit.named_parameters():
                if name.startswith(f"blocks.{last}.") or not name.startswith(
                    ("blocks.", "patch_embed.", "cls_token", "reg_token", "pos_embed")
                ):
                    names.append(f"vision_backbone.{attr}.{name}")
        return names

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in the backward pass (LLM and both ViTs): less memory, ~30% more compute."""
        self.vision_backbone.set_grad_checkpointing(True)
        enable = getattr(self.language_model, "activation_checkpointing_enable", None)  # newer transformers 5.x name
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.language_model.config.use_cache = False

    # -- sequence assembly -----------------------------------------------------------------------------------
    @staticmethod
    def query_positions(query_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) bool with exactly 64 True per row -> (B, 64) sorted positions."""
        counts = query_mask.sum(dim=1)
        if not query_mask.is_meta and not torch.all(counts == NUM_ACTION_QUERIES):  # meta: shapes only, unchecked
            raise ValueError(
                f"every sample needs exactly {NUM_ACTION_QUERIES} action-query positions, got {counts.tolist()}"
            )
        order = torch.argsort(query_mask.int(), dim=1, descending=True, stable=True)
        return order[:, :NUM_ACTION_QUERIES].sort(dim=1).values

    def embed_prompt(self, input_ids: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
        """Token embeddings with the learned action queries written at the query positions."""
        embeddings = self.language_model.get_input_embeddings()(input_ids)
        query_index = (query_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        queries = self.action_queries(query_index).to(embeddings.dtype)
        return torch.where(query_mask.unsqueeze(-1), queries, embeddings)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 6n, H, W) -> projected patch embeddings (B, 256n, D)."""
        return self.projector(self.vision_backbone(pixel_values))

    def assemble(
        self, patches: torch.Tensor, embeddings: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Insert the patch embeddings after the first prompt token."""
        patch_mask = attention_mask.new_ones(patches.shape[:2])
        sequence = torch.cat([embeddings[:, :1], patches.to(embeddings.dtype), embeddings[:, 1:]], dim=1)
        mask = torch.cat([attention_mask[:, :1], patch_mask, attention_mask[:, 1:]], dim=1)
        return sequence, mask

    def _run_until(self, sequence: torch.Tensor, mask: torch.Tensor, last_layer: int) -> tuple[torch.Tensor, ...]:
        """Embeddings and the outputs of LLM layers 1..last_layer; the forward is cut short after that layer."""
        if last_layer == 0:
            return (sequence,)
        layers = self.language_model.model.layers
        captured: list[torch.Tensor] = [sequence]

        def keep(_module: nn.Module, _args: object, output: object) -> None:
            captured.append(output[0] if isinstance(output, tuple) else output)
            if len(captured) == last_layer + 1:
                raise _StopForwardSignal

        handles = [layers[i].register_forward_hook(keep) for i in range(last_layer)]
        try:
            self.language_model.model(inputs_embeds=sequence, attention_mask=llm_attention_mask(mask), use_cache=False)
        except _StopForwardSignal:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return tuple(captured)

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        query_mask: torch.Tensor,
        stop_after_layer: int | None = None,
    ) -> VLMOutput:
        """Hidden states of every layer; with `stop_after_layer=k` < L, only the embeddings and layers 1..k are run
        and returned (hidden states 0..k, none normed), e.g. for an anchor that needs no deeper features."""
        if input_ids.shape[0] != pixel_values.shape[0]:
            raise ValueError(f"batch mismatch: {input_ids.shape[0]} prompts, {pixel_values.shape[0]} image sets")
        positions = self.query_positions(query_mask)
        patches = self.encode_images(pixel_values)
        embeddings = self.embed_prompt(input_ids, query_mask)
        sequence, mask = self.assemble(patches, embeddings, attention_mask)
        if stop_after_layer is not None and stop_after_layer < self.num_llm_layers:
            hidden_states = self._run_until(sequence, mask, stop_after_layer)
        else:
            out = self.language_model.model(
                inputs_embeds=sequence,
                attention_mask=llm_attention_mask(mask),
                output_hidden_states=True,
                use_cache=False,
            )
            hidden_states = tuple(out.hidden_states)
        num_patches = patches.shape[1]
        prompt = attention_mask.bool() & ~query_mask
        prompt_mm = torch.cat([prompt[:, :1], prompt.new_zeros(prompt.shape[0], num_patches), prompt[:, 1:]], dim=1)
        return VLMOutput(
            hidden_states=hidden_states,
            num_patches=num_patches,
            query_positions=positions,
            attention_mask=mask,
            prompt_mask=prompt_mm,
        )


def action_head_features(out: VLMOutput) -> torch.Tensor:
    """Stack every layer's task and ActionQuery features: (B, L + 1, P + 64, D), with VLA-Adapter's quirks (KEEP).

    * task ("raw") features are the first P multimodal positions: they start at the first prompt token and drop the
      last patch (an off-by-one of the original, kept because released heads were trained on it);
    * ActionQuery features are taken one position early: the last prompt token and the first 63 queries.
    """
    stacked = torch.stack(out.hidden_states, dim=1)  # (B, L+1, S, D)
    num_patches = out.num_patches
    raw = stacked[:, :, :num_patches]
    idx = (num_patches + out.query_positions - 1).view(stacked.shape[0], 1, -1, 1)
    aq = torch.gather(stacked, 2, idx.expand(-1, stacked.shape[1], -1, stacked.shape[3]))
    return torch.cat([raw, aq], dim=2)
