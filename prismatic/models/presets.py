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
    model_id="prism-qwen25-tiny-dinosiglip-224px",
    vision_backbone_id="dinosiglip-vit-tiny-224px",
    llm_backbone_id="qwen25-tiny-extra",
    dino=ViTSpec(DINO_TIMM_ID, embed_dim=64, depth=3, overrides={"embed_dim": 64, "depth": 3, "num_heads": 4}),
    siglip=ViTSpec(SIGLIP_TIMM_ID, embed_dim=64, depth=3, overrides={"embed_dim": 64, "depth": 3, "num_heads": 4}),
    llm=LLMSpec(
        hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2
    ),
)

# A mid-size twin (~210M parameters) for benchmarks: big enough for realistic compute ratios, small enough for a CPU.
MID = VLMPreset(
    name="mid",
    model_id="prism-qwen25-mid-dinosiglip-224px",
    vision_backbone_id="dinosiglip-vit-mid-224px",
    llm_backbone_id="qwen25-mid-extra",
    dino=ViTSpec(DINO_TIMM_ID, embed_dim=384, depth=12, overrides={"embed_dim": 384, "depth": 12, "num_heads": 6}),
    siglip=ViTSpec(SIGLIP_TIMM_ID, embed_dim=384, depth=12, overrides={"embed_dim": 384, "depth": 12, "num_heads": 6}),
    llm=LLMSpec(
        hidden_size=448, intermediate_size=2432, num_hidden_layers=12, num_attention_heads=7, num_key_value_heads=1
    ),
)

PRESETS: dict[str, VLMPreset] = {p.name: p for p in (FULL, TINY, MID)}


def get_preset(name: str) -> VLMPreset:
    """Look up a preset by name with an error that lists the valid names."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r} (--preset); choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def preset_for_backbones(vision_backbone_id: str, llm_backbone_id: str) -> VLMPreset:
    """The preset of a native Prismatic `config.json` (its `model.vision_backbone_id` / `model.llm_backbone_id`)."""
    for preset in PRESETS.values():
        if (preset.vision_backbone_id, preset.llm_backbone_id) == (vision_backbone_id, llm_backbone_id):
            return preset
    known = sorted((p.vision_backbone_id, p.llm_backbone_id) for p in PRESETS.values())
    raise ValueError(
        f"unsupported Prismatic backbones ({vision_backbone_id!r}, {llm_backbone_id!r}); supported: {known}"
    )


def preset_from_openvla_config(config: dict[str, Any]) -> VLMPreset:
    """Architecture described by an OpenVLA-style `config.json` (config bundle, released or own checkpoint)."""
    try:
        text = config["text_config"]
        dino_id, siglip_id = config["timm_model_ids"]
    except (KeyError, ValueError) as err:
        raise ValueError(f"config.json is not an OpenVLA-style model config (missing {err})") from err
    overrides = config.get("timm_model_overrides") or [{}, {}]
    dims = {DINO_TIMM_ID: (1024, 24), SIGLIP_TIMM_ID: (1152, 27)}
    specs = []
    for timm_id, extra in zip((dino_id, siglip_id), overrides, strict=True):
        if timm_id not in dims:
            raise ValueError(f"unsupported vision backbone {timm_id!r}; supported: {sorted(dims)}")
        embed, depth = dims[timm_id]
        specs.append(ViTSpec(timm_id, extra.get("embed_dim", embed), extra.get("depth", depth), dict(extra)))
    llm = LLMSpec(
        hidden_size=text["hidden_size"],
        intermediate_size=text["intermediate_size"],
        num_hidden_layers=text["num_hidden_layers"],
        num_attention_heads=text["num_attention_heads"],
        num_key_value_heads=text["num_key_value_heads"],
        vocab_size=text.get("vocab_size", QWEN25_PADDED_VOCAB_SIZE),
        max_position_embeddings=text.get("max_position_embeddings", 32768),
        rope_theta=text.get("rope_theta", 1_000_000.0),
        rms_norm_eps=text.get("rms_norm_eps", 1e-6),
        tie_word_embeddings=text.get("tie_word_embeddings", True),
    )
    image_size = int((config.get("image_sizes") or [224])[0])
    known = next(
        (p for p in PRESETS.values() if (p.dino, p.siglip, p.llm, p.image_size) == (*specs, llm, image_size)), None
    )
    if known is not None:
        return known
    return VLMPreset(
        name=config.get("preset", "custom"),
        model_id=config.get("model_id", "custom"),
        dino=specs[0],
        siglip=specs[1],
        llm=llm,
        vision_backbone_id=config.get("vision_backbone_id", "dinosiglip-vit-so-224px"),
        llm_backbone_id=config.get("llm_backbone_id", "qwen25-0_5b-extra"),
        image_size=image_size,
    )


def openvla_config(preset: VLMPreset) -> dict[str, Any]:
    """OpenVLA-style `config.json` content for `preset`, the inverse of `preset_from_openvla_config`.

    `auto_map` names the classes VLA-Adapter's loaders register (its `update_auto_map` writes the same); our loaders
    never import code from a checkpoint folder.
    """
    config: dict[str, Any] = {
        "architectures": ["OpenVLAForActionPrediction"],
        "auto_map": {
            "AutoConfig": "configuration_prismatic.OpenVLAConfig",
            "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction",
        },
        "model_type": "openvla",
        "arch_specifier": preset.arch_specifier,
        "hf_llm_id": "",
        "image_resize_strategy": preset.image_resize_strategy,
        "image_sizes": [preset.image_size, preset.image_size],
        "llm_backbone_id": preset.llm_backbone_id,
        "llm_max_length": preset.llm_max_length,
        "n_action_bins": 256,
        "norm_stats": {},
        "output_projector_states": False,
        "pad_to_multiple_of": 64,
        "pad_token_id": QWEN25_ENDOFTEXT_ID,
        "text_config": preset.llm.text_config(),
        "timm_model_ids": [preset.dino.timm_id, preset.siglip.timm_id],
        "timm_override_act_layers": [None, None],
        "torch_dtype": "bfloat16",
        "use_fused_vision_backbone": True,
        "vision_backbone_id": preset.vision_backbone_id,
    }
    if preset.dino.overrides or preset.siglip.overrides:
        # Extension of this project: timm kwargs that shrink the ViTs (absent for the real architecture).
        config["timm_model_overrides"] = [dict(preset.dino.overrides), dict(preset.siglip.overrides)]
        config["preset"] = preset.name
    return config


# Image normalisation of the fused backbone ("resize-naive": resize to 224 bicubic + antialias, ToTensor,
# Normalize). The DINO values are the bf16-rounded ImageNet statistics the released processor really applies.
DINO_MEAN = (0.484375, 0.455078125, 0.40625)
DINO_STD = (0.228515625, 0.2236328125, 0.224609375)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
# What timm's data config reports for the two backbones (recorded in `preprocessor_config.json` as `means`).
DINO_TIMM_MEAN = (0.485, 0.456, 0.406)
DINO_TIMM_STD = (0.229, 0.224, 0.225)
