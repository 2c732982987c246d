"""Architecture presets: the real `prism-qwen25-extra-dinosiglip-224px-0_5b` sizes and a tiny twin.

The tiny preset uses exactly the same classes, token counts (256 patches per 224px image) and vocabulary as the
real model, only narrower and shallower, so tests and the demo exercise the real code paths in seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Vocabulary of Qwen2.5-0.5B after Prismatic added 256 `<|extra_i|>` tokens and padded to a multiple of 64.
QWEN25_PADDED_VOCAB_SIZE = 151936
# Tokens of the Qwen2.5 tokenizer itself: 151,643 BPE tokens (+ 22 specials 151643..151664 on top).
QWEN25_TOKENIZER_VOCAB_SIZE = 151643
QWEN25_ENDOFTEXT_ID = 151643

DINO_TIMM_ID = "vit_large_patch14_reg4_dinov2.lvd142m"
SIGLIP_TIMM_ID = "vit_so400m_patch14_siglip_224"


@dataclass(frozen=True)
class ViTSpec:
    """One timm ViT of the fused vision backbone; `overrides` are timm kwargs that shrink it (empty = real size)."""

    timm_id: str
    embed_dim: int
    depth: int
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LLMSpec:
    """Qwen2 decoder sizes, in the names of transformers' `Qwen2Config`."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int = QWEN25_PADDED_VOCAB_SIZE
    max_position_embeddings: int = 32768
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True

    def text_config(self) -> dict[str, Any]:
        """The `text_config` section of an OpenVLA-style `config.json` (same keys as the released bundle)."""
        return {
            "attention_dropout": 0.0,
            "bos_token_id": QWEN25_ENDOFTEXT_ID,
            "eos_token_id": QWEN25_ENDOFTEXT_ID,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "max_window_layers": self.num_hidden_layers,
            "model_type": "qwen2",
            "num_attention_heads": self.num_attention_heads,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "sliding_window": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": "bfloat16",
            "use_cache": True,
            "use_mrope": False,
            "use_sliding_window": False,
            "vocab_size": self.vocab_size,
        }


@dataclass(frozen=True)
class VLMPreset:
    """Everything needed to build (and describe on disk) one Prismatic DINO-SigLIP + Qwen2.5 VLM."""

    name: str
    model_id: str
    dino: ViTSpec
    siglip: ViTSpec
    llm: LLMSpec
    vision_backbone_id: str = "dinosiglip-vit-so-224px"
    llm_backbone_id: str = "qwen25-0_5b-extra"
    arch_specifier: str = "no-align+fused-gelu-mlp"
    image_resize_strategy: str = "resize-naive"
    llm_max_length: int = 2048
    image_size: int = 224

    @property
    def vision_dim(self) -> int:
        """Channels of the fused patch features (DINO embed + SigLIP embed)."""
        return self.dino.embed_dim + self.siglip.embed_dim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = VLMPreset(
    name="full",
    model_id="prism-qwen25-extra-dinosiglip-224px+0_5b",
    dino=ViTSpec(DINO_TIMM_ID, embed_dim=1024, depth=24),
    siglip=ViTSpec(SIGLIP_TIMM_ID, embed_dim=1152, depth=27),
    llm=LLMSpec(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2
    ),
)

TINY = VLMPreset(
    name="tiny",
    model_id="prism-qwen25-extra-dinosiglip-224px+tiny",
    dino=ViTSpec(DINO_TIMM_ID, embed_dim=64, depth=3, overrides={"embed_dim": 64, "depth": 3, "num_heads": 4}),
    siglip=ViTSpec(SIGLIP_TIMM_ID, embed_dim=64, depth=3, overrides={"embed_dim": 64, "depth": 3, "num_heads": 4}),
    llm=LLMSpec(
        hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2
    ),
)

PRESETS: dict[str, VLMPreset] = {p.name: p for p in (FULL, TINY)}


def get_preset(name: str) -> VLMPreset:
    """Look up a preset by name with an error that lists the valid names."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r} (--preset); choose one of {sorted(PRESETS)}")
    return PRESETS[name]


# Image normalisation of the fused backbone ("resize-naive": resize to 224 bicubic + antialias, ToTensor,
# Normalize). The DINO values are the bf16-rounded ImageNet statistics the released processor really applies.
DINO_MEAN = (0.484375, 0.455078125, 0.40625)
DINO_STD = (0.228515625, 0.2236328125, 0.224609375)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
# What timm's data config reports for the two backbones (recorded in `preprocessor_config.json` as `means`).
DINO_TIMM_MEAN = (0.485, 0.456, 0.406)
DINO_TIMM_STD = (0.229, 0.224, 0.225)
