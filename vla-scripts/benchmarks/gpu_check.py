"""A few real training steps of the full-size policy on a GPU, through the trainer's own code, one JSON line per run.

    bash vla-scripts/gpu_check.sh                              # baseline and CRaFT, then 2-GPU DDP if there are 2
    python vla-scripts/benchmarks/gpu_check.py --vlm_path pretrained_models/prism-qwen25-extra-dinosiglip-224px-0_5b
    python vla-scripts/benchmarks/gpu_check.py --device cpu --preset tiny      # the same code, dry, on the CPU

Each run builds the policy (random weights of the real architecture, or the VLM at `--vlm_path`), LoRA, the precision
policy (`--base_precision`, bf16 frozen weights by default), the optimizer, CRaFT's anchor and the DDP wrapper with
`build_trainee`, then times `--steps` optimizer steps of `compute_gradients` + `apply_update` on right-padded
synthetic batches with the real shapes. It prints: step time, samples/s, peak `torch.cuda.max_memory_allocated`, the
SDPA kernel the LLM and ViTs ran (from the profiler), the dtypes of frozen and trainable weights, torch / CUDA
versions and the GPU's name. Without CUDA it says so in one line and exits 0.
"""

import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import draccus
import torch

from prismatic.models.batch import PolicyBatch, policy_batch
from prismatic.models.loaders import PolicySpec, load_prismatic_vlm
from prismatic.models.policy import VLAAdapterPolicy
from prismatic.models.precision import dtype_name, parameter_bytes_by_dtype
from prismatic.models.presets import PRESETS
from prismatic.models.vlm import PrismaticVLM
from prismatic.training.checkpointing import RunPaths
from prismatic.training.config import FinetuneConfig
from prismatic.training.distributed import DistContext, init_distributed, shutdown_distributed
from prismatic.training.trainer import GradientStepper, apply_update, build_trainee, compute_gradients, trainable_vlm
from prismatic.vla.constants import ACTION_QUERY_TOKEN_ID, LIBERO_CONSTANTS, NUM_ACTION_QUERIES

SDPA_KERNELS = {  # profiler op name -> what the check reports
    "_scaled_dot_product_flash_attention_for_cpu": "flash (cpu)",
    "_scaled_dot_product_flash_attention": "flash",
    "_scaled_dot_product_cudnn_attention": "cudnn",
    "_scaled_dot_product_efficient_attention": "memory-efficient",
    "_scaled_dot_product_attention_math": "math",
}


@dataclass
class GPUCheckConfig:
    preset: str = "full"  # full | mid | tiny (architecture of the random-weight VLM)
    vlm_path: Path | None = None  # real weights: a Prismatic VLM folder (then --preset is ignored)
    device: str = "auto"  # auto (CUDA or nothing) | cuda | cpu (a dry run of the same code)
    methods: list[str] = field(default_factory=lambda: ["baseline", "craft"])
    steps: int = 6  # optimizer steps per run; the first one is not timed
    batch_size: int = 8
    lora_rank: int = 64
    base_precision: str = "bf16"
    gradient_checkpointing: bool = False
    seed: int = 7


def synthetic_batch(batch_size: int, step: int, generator: torch.Generator) -> PolicyBatch:
    """LIBERO-shaped inputs: 2 cameras, prompts of 50-56 tokens (right-padded) + 64 action queries, proprio, actions."""
    robot = LIBERO_CONSTANTS
    prompts = [
        torch.randint(0, 150_000, (50 + (index + step) % 7,), generator=generator).tolist()
        + [ACTION_QUERY_TOKEN_ID] * NUM_ACTION_QUERIES
        for index in range(batch_size)
    ]
    return policy_batch(
        prompts,
        0,
        torch.randn(batch_size, 12, 224, 224, generator=generator),
        proprio=torch.randn(batch_size, robot.proprio_dim, generator=generator),
        actions=torch.rand(batch_size, robot.action_chunk, robot.action_dim, generator=generator) * 2 - 1,
    )


def sdpa_kernels(model: torch.nn.Module, batch: PolicyBatch, stepper: GradientStepper) -> list[str]:
    """The scaled-dot-product-attention kernels one forward ran, read off the profiler's op names."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.no_grad(), stepper.autocast(), torch.profiler.profile(activities=activities) as prof:
        model(batch)
    names = {event.key.removeprefix("aten::") for event in prof.key_averages()}
    return sorted({label for op, label in SDPA_KERNELS.items() if op in names})


def run(cfg: GPUCheckConfig, method: str, ctx: DistContext) -> dict:
    device = ctx.device
    torch.manual_seed(cfg.seed)
    finetune = FinetuneConfig(
        use_craft=method == "craft",
        lora_rank=cfg.lora_rank,
        base_precision=cfg.base_precision,
        gradient_checkpointing=cfg.gradient_checkpointing,
        batch_size=cfg.batch_size,
        learning_rate=2e-4,
        seed=cfg.seed,
    )
    started = time.perf_counter()
    if cfg.vlm_path is not None:
        vlm = load_prismatic_vlm(cfg.vlm_path, num_images=2)
    else:
        with torch.device(device):  # random weights, initialised where they will live
            vlm = PrismaticVLM(PRESETS[cfg.preset], num_images=2)
    policy = VLAAdapterPolicy(trainable_vlm(vlm, True, cfg.lora_rank, 0.0), LIBERO_CONSTANTS)
    with tempfile.TemporaryDirectory() as scratch:  # the trainer's run state wants a folder; nothing is saved
        trainee = build_trainee(finetune, ctx, RunPaths(Path(scratch), "gpu-check"), {}, None, (policy, PolicySpec()))
    build_s = time.perf_counter() - started
    stepper = GradientStepper(
        model=trainee.model,
        anchor=trainee.anchor,
        craft_step=trainee.craft_step,
        craft_cfg=finetune.craft_config(),
        accum=1,
        seed=cfg.seed,
        ctx=ctx,
        precision=trainee.precision,
    )
    generator = torch.Generator().manual_seed(cfg.seed + ctx.rank)
    batches = [synthetic_batch(cfg.batch_size, step, generator) for step in range(cfg.steps)]
    if device.type == "cuda":
        batches = [batch.pin_memory() for batch in batches]
        torch.cuda.reset_peak_memory_stats(device)
    times, losses = [], []
    for step, batch in enumerate(batches, start=1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step_start = time.perf_counter()
        grads = compute_gradients(stepper, iter([batch]), step, measure=method == "craft")
        update = apply_update(trainee, finetune, step, grads.losses[0])
        if update.taken and trainee.craft_step is not None:
            trainee.craft_step.commit()
        losses.append(float(grads.losses[0]))  # a host sync, like the trainer's logging
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step > 1:
            times.append(time.perf_counter() - step_start)
    kernels = sdpa_kernels(trainee.model, batches[0].to(device), stepper)
    frozen = parameter_bytes_by_dtype(trainee.policy.vlm, trainable=False)
    result = {
        "check": "gpu_training_step",
        "method": method,
        "preset": "weights from " + str(cfg.vlm_path) if cfg.vlm_path else cfg.preset,
        "world_size": ctx.world_size,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "batch_size_per_process": cfg.batch_size,
        "lora_rank": cfg.lora_rank,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "build_s": round(build_s, 1),
        "step_s": round(statistics.median(times), 4) if times else None,
        "samples_per_s": round(cfg.batch_size * ctx.world_size / statistics.median(times), 2) if times else None,
        "peak_memory_allocated_gib": (
            round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None
        ),
        "sdpa_kernels": kernels,
        "frozen_weight_dtypes": sorted(frozen),
        "trainable_weight_dtypes": sorted({dtype_name(p.dtype) for p in trainee.trainable}),
        "precision": trainee.precision.describe(),
        # CRaFT runs reduce their own gradients (one all-reduce of both sets) and are never wrapped
        "ddp_wrapper": type(trainee.model).__name__ == "DistributedDataParallel",
        "losses": [round(loss, 4) for loss in losses],
        "finite": all(math.isfinite(loss) for loss in losses),
    }
    return result


@draccus.wrap()
def main(cfg: GPUCheckConfig) -> None:
    if cfg.device not in ("auto", "cuda", "cpu"):
        raise SystemExit(f"--device must be auto, cuda or cpu (got {cfg.device!r})")
    if cfg.vlm_path is None and cfg.preset not in PRESETS:
        raise SystemExit(f"--preset must be one of {', '.join(sorted(PRESETS))} (got {cfg.preset!r})")
    if cfg.vlm_path is not None and not (cfg.vlm_path / "config.json").is_file():
        raise SystemExit(f"--vlm_path {cfg.vlm_path} is not a Prismatic VLM folder (no config.json)")
    if cfg.steps < 2:
        raise SystemExit("--steps must be >= 2 (the first step is not timed)")
    if cfg.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # init_distributed picks CUDA whenever it sees one
    elif not torch.cuda.is_available():
        print(
            f"gpu_check: no CUDA device visible (torch {torch.__version__}, CUDA build {torch.version.cuda}); "
            "nothing to check here",
            flush=True,
        )
        return
    unknown = [method for method in cfg.methods if method not in ("baseline", "craft")]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown} (baseline, craft)")
    ctx = init_distributed()
    try:
        for method in cfg.methods:
            result = run(cfg, method, ctx)
            if ctx.is_main:
                print(json.dumps(result), flush=True)
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    main()
