"""GPU memory of a training step, ours next to VLA-Adapter's reference recipe, printed as JSON (bytes).

    python vla-scripts/benchmarks/bench_memory.py --config full --batch_size 8 --lora_rank 64
    python vla-scripts/benchmarks/bench_memory.py --config full --batch_size 8 --use_craft True
    python vla-scripts/benchmarks/bench_memory.py --config mid --batch_size 2 --measure_cpu True

Computed from the real architecture on the `meta` device in seconds (prismatic/training/memory_model.py): frozen
weights by dtype, trainable weights, gradients, optimizer state, CRaFT's extras, activations at that batch with and
without gradient checkpointing, and their total. `ours` is this trainer (`--base_precision bf16`, the CUDA default:
frozen weights bf16, trainable fp32, fused attention, no vocabulary logits); `reference` is VLA-Adapter's recipe
(everything bf16, LoRA on every linear layer, fp32 logits over the 151,936-token vocabulary and their cross-entropy,
no gradient checkpointing, an explicit attention mask). The totals are the step's peak by construction (weights,
gradients and moments all resident, activations at the start of the backward pass); a GPU adds the CUDA context
(~0.5 GB) and allocator slack on top.

`--measure_cpu True` checks the accounting against a real step of `ours` on this CPU (bf16 frozen weights, CPU bf16
autocast): parameter, gradient and AdamW-state bytes read off the live tensors, the saved-activation count of a real
forward, and the process's resident-memory growth.
"""

import json
from dataclasses import dataclass

import draccus
import torch

from prismatic.models.presets import PRESETS
from prismatic.training.memory_model import (
    TrainingRecipe,
    build_for_recipe,
    gigabytes,
    measure_activations,
    meta_batch,
    recipe_shapes,
    step_memory,
)
from prismatic.util.benchmarking import peak_resident_memory_gb, resident_memory_gb


@dataclass
class BenchMemoryConfig:
    config: str = "full"  # full | mid | tiny
    batch_size: int = 8
    use_lora: bool = True
    lora_rank: int = 64
    use_craft: bool = False
    gradient_checkpointing: bool = False  # ours; the reference recipe never checkpoints
    prompt_tokens: int = 56  # VLA-Adapter's LIBERO prompt; + 64 action queries
    measure_cpu: bool = False  # also run one real step of `ours` on this CPU and compare


def tensor_bytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def measure_cpu_step(preset_name: str, recipe: TrainingRecipe) -> dict[str, float]:
    """One real training step of `ours` on the CPU: what the live tensors hold, against the meta-device model."""
    from prismatic.models.precision import Precision
    from prismatic.training.config import FinetuneConfig
    from prismatic.training.trainer import make_optimizer

    preset = PRESETS[preset_name]
    before = resident_memory_gb()
    torch.manual_seed(0)
    policy = build_for_recipe(preset, recipe, device="cpu").train()
    params = list(dict.fromkeys(policy.parameters()))
    trainable = [p for p in params if p.requires_grad]
    optimizer = make_optimizer(trainable, FinetuneConfig())
    batch = meta_batch(recipe.batch_size, recipe.num_images, recipe.prompt_tokens, device="cpu")
    saved = measure_activations(policy, batch, autocast=True, keep_mask=False)  # the counting pass, on real tensors
    after_build = resident_memory_gb()
    with Precision.from_flag("bf16", torch.device("cpu")).autocast():
        out = policy(batch)
    (out.actions.float() - batch.actions).abs().mean().backward()
    optimizer.step()
    moments = [value for state in optimizer.state.values() for value in state.values() if value.dim() > 0]
    return {
        "frozen_weights_bf16_bytes": tensor_bytes([p for p in params if not p.requires_grad and p.dtype.itemsize == 2]),
        "frozen_weights_fp32_bytes": tensor_bytes([p for p in params if not p.requires_grad and p.dtype.itemsize == 4]),
        "trainable_weights_bytes": tensor_bytes(trainable),
        "gradients_bytes": tensor_bytes([p.grad for p in trainable if p.grad is not None]),
        "optimizer_state_bytes": tensor_bytes(moments),
        "activations_counted_on_cpu_bytes": saved.no_checkpointing,
        "rss_after_build_bytes": int((after_build - before) * 2**30),
        "peak_rss_bytes": int(peak_resident_memory_gb() * 2**30),
    }


@draccus.wrap()
def main(cfg: BenchMemoryConfig) -> None:
    if cfg.config not in PRESETS:
        raise SystemExit(f"--config must be one of {', '.join(sorted(PRESETS))} (got {cfg.config!r})")
    if cfg.batch_size < 1 or cfg.lora_rank < 1:
        raise SystemExit("--batch_size and --lora_rank must be >= 1")
    preset = PRESETS[cfg.config]
    ours = TrainingRecipe(
        batch_size=cfg.batch_size,
        lora_rank=cfg.lora_rank if cfg.use_lora else None,
        use_craft=cfg.use_craft,
        gradient_checkpointing=cfg.gradient_checkpointing,
        prompt_tokens=cfg.prompt_tokens,
    )
    reference = TrainingRecipe(
        batch_size=cfg.batch_size,
        lora_rank=cfg.lora_rank if cfg.use_lora else None,
        prompt_tokens=cfg.prompt_tokens,
        reference=True,
    )
    report: dict = {
        "benchmark": "training_step_memory",
        "config": cfg.config,
        "batch_size": cfg.batch_size,
        "lora_rank": cfg.lora_rank if cfg.use_lora else None,
        "use_craft": cfg.use_craft,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "ours": step_memory(preset, ours),
        "reference": step_memory(preset, reference),
        "shapes": {"ours": recipe_shapes(preset, ours), "reference": recipe_shapes(preset, reference)},
    }
    report["ours_gib"] = gigabytes(report["ours"])
    report["reference_gib"] = gigabytes(report["reference"])
    if cfg.measure_cpu:
        measured = measure_cpu_step(cfg.config, ours)
        report["measured_cpu"] = measured
        report["measured_cpu_matches"] = {
            key: measured[key] == report["ours"][key]
            for key in (
                "frozen_weights_bf16_bytes",
                "frozen_weights_fp32_bytes",
                "trainable_weights_bytes",
                "gradients_bytes",
                "optimizer_state_bytes",
            )
        }
        report["measured_cpu_matches"]["activations"] = (
            measured["activations_counted_on_cpu_bytes"] == report["ours"]["activations_no_checkpointing_bytes"]
        )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
