"""GPU memory of a training step, computed from the real model on the `meta` device (no weights, no GPU).

Weights, gradients and optimizer state are counted from the parameters of the policy as the trainer builds it (or as
VLA-Adapter's reference builds it). Activations are what autograd saves for the backward pass, plus what the
forward's outputs keep alive, counted by a `saved_tensors_hooks` pass over a meta-device forward: each storage once,
parameters excluded. GPU-only behaviour is emulated on the way:

* bf16 autocast: the matmul-class ops (linear, matmul, conv, attention) compute in bf16 and the precision-sensitive
  ones (layer/group norm, softmax, log-softmax) in fp32, as CUDA autocast does; the bf16 copies autocast makes of fp32
  weights are saved like activations (they are, on a GPU).
* fused attention: every `scaled_dot_product_attention` saves what the flash / memory-efficient kernels keep (q, k, v,
  the output and one fp32 log-sum-exp per query and head), never an S x S matrix.

Gradient checkpointing (per ViT block and LLM decoder layer) is estimated from the same pass: each layer then keeps
only its input, and one layer's activations exist again during its recomputation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch import nn
from torch.overrides import TorchFunctionMode

from prismatic.models.batch import PolicyBatch, random_batch
from prismatic.models.lora import LoRASettings
from prismatic.models.policy import VLAAdapterPolicy, unwrap_vlm
from prismatic.models.precision import dtype_name, store_frozen_weights
from prismatic.models.presets import VLMPreset
from prismatic.models.vlm import PrismaticVLM
from prismatic.training.trainer import trainable_vlm
from prismatic.vla.constants import LIBERO_CONSTANTS

GB = 2**30
PROMPT_TOKENS = 56  # VLA-Adapter's LIBERO prompt ("In: What action should the robot take to ...?\nOut:") in tokens
ADAM_MOMENTS = 2
LOWER_PRECISION_OPS = {
    F.linear,
    F.conv2d,
    torch.matmul,
    torch.Tensor.matmul,
    torch.Tensor.__matmul__,
    torch.mm,
    torch.bmm,
    torch.baddbmm,
    torch.addmm,
    torch.einsum,
    F.scaled_dot_product_attention,
}
FP32_OPS = {F.layer_norm, F.group_norm, F.softmax, F.log_softmax, torch.softmax, torch.Tensor.softmax}


@dataclass(frozen=True)
class TrainingRecipe:
    """What decides the memory of a step."""

    batch_size: int = 8
    lora_rank: int | None = 64  # None: full fine-tuning
    use_craft: bool = False
    gradient_checkpointing: bool = False
    use_pro_version: bool = True
    num_images: int = 2
    prompt_tokens: int = PROMPT_TOKENS
    reference: bool = False  # VLA-Adapter's recipe instead of ours (see `build_for_recipe`)


# ---------------------------------------------------------------------------------------------------------------
# the policy as each recipe builds it
# ---------------------------------------------------------------------------------------------------------------
def all_linear_targets(vlm: PrismaticVLM) -> list[str]:
    """peft's `target_modules="all-linear"` (VLA-Adapter's choice): every nn.Linear except the vocabulary head."""
    return [name for name, module in vlm.named_modules() if isinstance(module, nn.Linear) and name != "lm_head"]


def build_for_recipe(preset: VLMPreset, recipe: TrainingRecipe, device: str | torch.device = "meta") -> nn.Module:
    """The trained policy of a recipe, with the parameter dtypes it trains in.

    Ours: frozen weights bf16, trainable weights fp32 (LoRA on our explicit target list, action queries, head,
    proprio projector). VLA-Adapter's reference: the whole model loaded in bf16, LoRA on every linear layer in bf16
    (peft 0.11 gives adapters the base layer's dtype), the action head and proprio projector moved to bf16.
    """
    with torch.device(device):
        vlm = PrismaticVLM(preset, num_images=recipe.num_images)
        if recipe.reference:
            vlm.to(torch.bfloat16)
        if recipe.reference and recipe.lora_rank is not None:
            settings = LoRASettings(rank=recipe.lora_rank)
            config = LoraConfig(
                r=settings.rank,
                lora_alpha=settings.alpha,
                init_lora_weights="gaussian",
                target_modules=all_linear_targets(vlm),
            )
            vlm_module: nn.Module = get_peft_model(vlm, config, autocast_adapter_dtype=False)
            unwrap_vlm(vlm_module).action_queries.weight.requires_grad_(True)
        else:  # exactly as the trainer does it
            vlm_module = trainable_vlm(vlm, recipe.lora_rank is not None, recipe.lora_rank or 1, 0.0)
        policy = VLAAdapterPolicy(vlm_module, LIBERO_CONSTANTS, use_pro_version=recipe.use_pro_version)
    if recipe.reference:
        policy.to(torch.bfloat16)
    else:
        store_frozen_weights(policy.vlm, torch.bfloat16)
    if recipe.gradient_checkpointing:
        policy.base_vlm.enable_gradient_checkpointing()
    return policy


# ---------------------------------------------------------------------------------------------------------------
# activations
# ---------------------------------------------------------------------------------------------------------------
class _FusedAttention(torch.autograd.Function):
    """Stands in for a flash / memory-efficient attention kernel: an output of the right shape, and exactly what such
    a kernel saves for its backward (q, k, v, output, log-sum-exp). Only its forward is ever run (on `meta`)."""

    @staticmethod
    def forward(ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        out = query.new_empty(*query.shape[:-1], value.shape[-1])
        logsumexp = query.new_empty(query.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(query, key, value, out, logsumexp)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:  # pragma: no cover - never run
        raise NotImplementedError("the memory model runs forward passes only")


class _GPUTrainingEmulation(TorchFunctionMode):
    """CUDA bf16 autocast's dtype rules and fused attention kernels, for a forward on the meta device."""

    def __init__(self, autocast: bool) -> None:
        super().__init__()
        self.autocast = autocast

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if self.autocast and func in LOWER_PRECISION_OPS:
            args, kwargs = _cast_floats((args, kwargs), torch.bfloat16)
        elif self.autocast and func in FP32_OPS:
            args, kwargs = _cast_floats((args, kwargs), torch.float32)
        if func is F.scaled_dot_product_attention:
            query, key, value = args[:3]
            return _FusedAttention.apply(query, key, value)
        return func(*args, **kwargs)


def _cast_floats(tree: Any, dtype: torch.dtype) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree.to(dtype) if tree.is_floating_point() and tree.dtype != dtype else tree
    if isinstance(tree, tuple | list):
        return type(tree)(_cast_floats(item, dtype) for item in tree)
    if isinstance(tree, dict):
        return {key: _cast_floats(value, dtype) for key, value in tree.items()}
    return tree


def _storage_key(tensor: torch.Tensor) -> tuple[int, int]:
    storage = tensor.untyped_storage()
    return storage._cdata, storage.nbytes()


def _tensors_in(tree: Any) -> Iterator[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, tuple | list):
        for item in tree:
            yield from _tensors_in(item)
    elif isinstance(tree, dict):
        for item in tree.values():
            yield from _tensors_in(item)
    elif hasattr(tree, "__dataclass_fields__"):
        for name in tree.__dataclass_fields__:
            yield from _tensors_in(getattr(tree, name))


def checkpointed_layers(vlm: PrismaticVLM) -> list[nn.Module]:
    """The units `enable_gradient_checkpointing` recomputes: every ViT block and every LLM decoder layer."""
    vision = vlm.vision_backbone
    return [*vision.featurizer.blocks, *vision.fused_featurizer.blocks, *vlm.language_model.model.layers]


@dataclass
class ActivationReport:
    """Bytes kept for the backward pass after one forward."""

    no_checkpointing: int
    with_checkpointing: int
    by_dtype: dict[str, int] = field(default_factory=dict)


def measure_activations(policy: nn.Module, batch: PolicyBatch, autocast: bool, keep_mask: bool) -> ActivationReport:
    """One forward of `policy` on `batch` (both on the same device, meta or real), counting saved storages.

    `keep_mask`: hand the LLM the explicit attention mask, as VLA-Adapter's reference does (transformers then repeats
    the key/value heads for the masked kernel); otherwise right-padded prompts run with causal attention only.
    """
    parameters = {_storage_key(p) for p in policy.parameters()}
    saved: dict[tuple[int, int], torch.Tensor] = {}
    owner: dict[tuple[int, int], int] = {}  # storage -> index of the checkpointed layer that saved it (-1: none)
    layers = checkpointed_layers(policy.base_vlm)
    layer_inputs: dict[int, set[tuple[int, int]]] = {}
    active: list[int] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key not in parameters and key not in saved:
            saved[key] = tensor
            owner[key] = active[-1] if active else -1
        return tensor

    def enter(index: int) -> Any:
        def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            active.append(index)
            layer_inputs[index] = {_storage_key(t) for t in _tensors_in((args, kwargs)) if t.is_floating_point()}

        return hook

    def leave(_module: nn.Module, _args: Any, _output: Any) -> None:
        active.pop()

    handles = []
    for index, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(enter(index), with_kwargs=True))
        handles.append(layer.register_forward_hook(leave))
    import transformers.masking_utils

    import prismatic.models.vlm as vlm_module

    patches = contextlib.ExitStack()
    if keep_mask:
        patches.enter_context(_patched(vlm_module, "llm_attention_mask", lambda mask: mask))
    if batch.input_ids.is_meta:  # transformers reads position ids to detect packed sequences: none here
        patches.enter_context(_patched(transformers.masking_utils, "find_packed_sequence_indices", lambda ids: None))
        # and whether the mask may be skipped, by reading it: the reference's batches are padded, so never; ours are
        # unpadded here (or right-padded, and the mask never reaches transformers), so always, as on real tensors
        skip = not keep_mask
        patches.enter_context(_patched(transformers.masking_utils, "_ignore_causal_mask_sdpa", lambda *a, **k: skip))
    try:
        with patches, _GPUTrainingEmulation(autocast), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = policy(batch)
    finally:
        for handle in handles:
            handle.remove()
    for tensor in _tensors_in(out):  # what the outputs keep alive (e.g. every layer's hidden states)
        key = _storage_key(tensor)
        if key not in parameters and key not in saved:
            saved[key], owner[key] = tensor, -1
    total = sum(key[1] for key in saved)
    by_dtype: dict[str, int] = {}
    for key, tensor in saved.items():
        by_dtype[dtype_name(tensor.dtype)] = by_dtype.get(dtype_name(tensor.dtype), 0) + key[1]
    outside = {key for key, index in owner.items() if index == -1}
    inside = [sum(key[1] for key, index in owner.items() if index == layer) for layer in range(len(layers))]
    boundaries = set().union(*layer_inputs.values()) - outside if layer_inputs else set()
    with_checkpointing = sum(key[1] for key in outside) + sum(key[1] for key in boundaries) + max(inside, default=0)
    return ActivationReport(total, with_checkpointing, by_dtype)


@contextlib.contextmanager
def _patched(module: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


def meta_batch(
    batch_size: int, num_images: int, prompt_tokens: int, device: str | torch.device = "meta"
) -> PolicyBatch:
    """An unpadded batch with the real shapes (prompts of `prompt_tokens` + 64 action queries)."""
    return random_batch(batch_size, num_images, torch.Generator().manual_seed(0), prompt_tokens).to(device)


# ---------------------------------------------------------------------------------------------------------------
# the whole step
# ---------------------------------------------------------------------------------------------------------------
def _bytes(params: list[torch.nn.Parameter]) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def step_memory(preset: VLMPreset, recipe: TrainingRecipe) -> dict[str, int | float]:
    """Bytes per category of one training step of `recipe` (see the module docstring); `total_bytes` sums the
    categories that coexist at the step's peak (the start of the backward pass)."""
    policy = build_for_recipe(preset, recipe)
    params = list(dict.fromkeys(policy.parameters()))
    trainable = [p for p in params if p.requires_grad]
    frozen = [p for p in params if not p.requires_grad]
    out: dict[str, int | float] = {}
    for dtype in (torch.bfloat16, torch.float32):
        out[f"frozen_weights_{dtype_name(dtype)}_bytes"] = _bytes([p for p in frozen if p.dtype == dtype])
    out["trainable_weights_bytes"] = _bytes(trainable)
    out["gradients_bytes"] = _bytes(trainable)  # .grad in the parameter's dtype
    out["optimizer_state_bytes"] = ADAM_MOMENTS * _bytes(trainable)  # AdamW moments in the parameter's dtype
    craft = 0
    if recipe.use_craft and not recipe.reference:
        craft = 2 * sum(p.numel() for p in trainable) * 4  # CRaFT's fp32 accumulators: g_act and g_ret
        if recipe.lora_rank is None:  # full fine-tuning: a frozen bf16 copy of the initial VLM is the anchor
            craft += sum(p.numel() for p in policy.base_vlm.parameters()) * 2
    sequence = 1 + recipe.num_images * 256 + recipe.prompt_tokens + 64 - 1
    if recipe.use_craft and not recipe.reference:
        # the anchor's no-grad forward holds its hidden states (embeddings and every layer, bf16) until its features
        # are pooled
        hidden_states = policy.base_vlm.num_llm_layers + 1
        craft += hidden_states * recipe.batch_size * sequence * preset.llm.hidden_size * 2
    out["craft_extras_bytes"] = craft
    batch = meta_batch(recipe.batch_size, recipe.num_images, recipe.prompt_tokens)
    # Ours drops the mask for right-padded prompts; this batch has no padding, so both forwards see the same shapes.
    activations = measure_activations(policy, batch, autocast=True, keep_mask=recipe.reference)
    out["activations_no_checkpointing_bytes"] = activations.no_checkpointing
    out["activations_with_checkpointing_bytes"] = activations.with_checkpointing
    out["activations_bytes"] = (
        activations.with_checkpointing if recipe.gradient_checkpointing else activations.no_checkpointing
    )
    # The reference computes the LM head over the 151,936-token vocabulary (it passes labels): fp32 logits held by
    # the output, and the log-softmax the cross-entropy saves; ours never runs the LM head.
    vocab = preset.llm.vocab_size
    out["logits_bytes"] = recipe.batch_size * sequence * vocab * (4 + 4) if recipe.reference else 0
    out["total_bytes"] = sum(
        int(out[key])
        for key in (
            "frozen_weights_bf16_bytes",
            "frozen_weights_fp32_bytes",
            "trainable_weights_bytes",
            "gradients_bytes",
            "optimizer_state_bytes",
            "craft_extras_bytes",
            "activations_bytes",
            "logits_bytes",
        )
    )
    return out


def recipe_shapes(preset: VLMPreset, recipe: TrainingRecipe) -> dict[str, int]:
    """The sizes behind a `step_memory` report: trainable parameters and the LLM's sequence length."""
    policy = build_for_recipe(preset, recipe)
    return {
        "trainable_parameters": sum(p.numel() for p in policy.parameters() if p.requires_grad),
        "sequence_length": 1 + recipe.num_images * 256 + recipe.prompt_tokens + 64 - 1,
    }


def gigabytes(report: dict[str, int | float]) -> dict[str, float]:
    """The `*_bytes` entries in GiB, rounded (for the docs)."""
    return {
        key.removesuffix("_bytes") + "_gib": round(value / GB, 2)
        for key, value in report.items()
        if key.endswith("_bytes")
    }
