"""LoRA for the Prismatic VLM through peft, with an explicit target list.

Targets (all `nn.Linear`, chosen on purpose rather than peft's "all-linear"):
  * LLM: `q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj` of every decoder layer;
  * both ViTs: `attn.qkv`, `attn.proj`, `mlp.fc1`, `mlp.fc2` of the blocks that feed the features (all but the last
    block, whose output is never used);
  * projector: `fc1`, `fc2`, `fc3`.
Not targeted: the vocabulary head (`lm_head`, never run), patch-embedding convolutions, the unused last ViT block
and SigLIP's attention-pool head (LoRA there would create parameters without gradients, which breaks DDP).
`action_queries` is trained fully (peft `modules_to_save`); the original stays frozen inside the wrapper, so
disabling the adapters gives back the initial model exactly - CRaFT's anchor at no memory cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from prismatic.models.vlm import PrismaticVLM

LLM_TARGETS = {
    "self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
}
VIT_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
PROJECTOR_TARGETS = ("fc1", "fc2", "fc3")
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # the only adapter format read (peft's .bin fallback is a pickle)


@dataclass(frozen=True)
class LoRASettings:
    rank: int = 64
    dropout: float = 0.0
    init: str = "gaussian"  # peft init_lora_weights: B = 0, A ~ N(0, 1/r); the adapted model starts equal to the base

    @property
    def alpha(self) -> int:
        return 2 * self.rank

    def validate(self) -> None:
        if self.rank < 1:
            raise ValueError(f"--lora_rank must be >= 1 (got {self.rank})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"--lora_dropout must be in [0, 1) (got {self.dropout})")


def lora_target_modules(vlm: PrismaticVLM) -> list[str]:
    """Full names of every linear layer LoRA adapts (see the module docstring)."""
    names: list[str] = []
    for layer in range(vlm.num_llm_layers):
        for group, targets in LLM_TARGETS.items():
            names.extend(f"language_model.model.layers.{layer}.{group}.{t}" for t in targets)
    for featurizer, used in vlm.vision_backbone.used_blocks().items():
        for block in range(used):
            names.extend(f"vision_backbone.{featurizer}.blocks.{block}.{t}" for t in VIT_TARGETS)
    names.extend(f"projector.{t}" for t in PROJECTOR_TARGETS)
    modules = dict(vlm.named_modules())
    missing = [n for n in names if not isinstance(modules.get(n), nn.Linear)]
    if missing:
        raise RuntimeError(f"LoRA target(s) missing or not nn.Linear: {missing[:5]}")
    return names


def keep_input_dtype(model: nn.Module) -> nn.Module:
    """Stop peft from casting each adapted layer's input to the adapter's dtype.

    With bf16 frozen weights and fp32 LoRA matrices under bf16 autocast, that cast makes an fp32 copy of every
    adapted layer's input, and autocast then a bf16 copy of it that the backward keeps, one per projection (q, k and
    v, gate and up each keep their own): ~0.7 GB more activations at full size, batch 8. Autocast alone casts inputs
    and adapter weights correctly; with fp32 everywhere there is nothing to cast either way.
    """
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False
    return model


def apply_lora(vlm: PrismaticVLM, settings: LoRASettings) -> PeftModel:
    """Freeze the VLM, add LoRA adapters to the target list, train `action_queries` fully."""
    settings.validate()
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        init_lora_weights=settings.init,
        target_modules=lora_target_modules(vlm),
        modules_to_save=["action_queries"],
    )
    return keep_input_dtype(get_peft_model(vlm, config))


def load_lora(vlm: PrismaticVLM, adapter_dir: str | Path, trainable: bool = False) -> PeftModel:
    """Attach a saved adapter (`adapter_config.json` + `adapter_model.safetensors`) to a base VLM."""
    adapter_dir = Path(adapter_dir)
    for name in ("adapter_config.json", ADAPTER_WEIGHTS):
        if not (adapter_dir / name).is_file():
            raise FileNotFoundError(f"{adapter_dir / name} is missing: not a complete LoRA adapter folder")
    return keep_input_dtype(PeftModel.from_pretrained(vlm, str(adapter_dir), is_trainable=trainable))


def merge_lora(vlm: nn.Module) -> PrismaticVLM:
    """Fold the adapters into the base weights and return the plain VLM (trained action queries included)."""
    if not isinstance(vlm, PeftModel):
        raise TypeError("merge_lora expects a peft-wrapped VLM")
    merged = vlm.merge_and_unload()
    assert isinstance(merged, PrismaticVLM)
    return merged


def trainable_parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
