"""CRaFT's cost over the baseline: optimizer-step time and peak memory on the same batches, printed as JSON.

    python craft_experiments/02_stability_efficiency/bench_craft_overhead.py
    python craft_experiments/02_stability_efficiency/bench_craft_overhead.py --configs '[tiny]' --steps 10

For each model size (tiny, mid) and tuning mode (LoRA, full fine-tuning), a baseline and a CRaFT run each execute
the same seeded micro-batches through the trainer's own step code (`compute_gradients` + AdamW), in separate
processes so that each peak is its own. Reported: mean step time after one warm-up step, peak resident memory,
and the growth of resident memory during the steps (what training adds on top of the loaded model).
"""

import json
import time
from dataclasses import dataclass, field

import draccus
import torch

from prismatic.util.benchmarking import peak_resident_memory_gb, resident_memory_gb, run_json_worker

CONFIGS = ("tiny", "mid")
TUNINGS = ("lora", "full")


@dataclass
class BenchCraftConfig:
    configs: list[str] = field(default_factory=lambda: list(CONFIGS))
    tunings: list[str] = field(default_factory=lambda: list(TUNINGS))
    batch_size: int = 2
    grad_accumulation_steps: int = 2
    steps: int = 4  # timed optimizer steps (after one warm-up step)
    worker: str = ""  # internal: "<config>,<tuning>,<method>"


def run_worker(cfg: BenchCraftConfig) -> dict:
    from craft import CRaFTConfig, CRaFTStep
    from prismatic.assets.tiny_vlm import init_vlm
    from prismatic.models.anchor import Anchor
    from prismatic.models.batch import random_batch
    from prismatic.models.policy import VLAAdapterPolicy
    from prismatic.models.presets import MID, TINY
    from prismatic.training.distributed import DistContext
    from prismatic.training.trainer import GradientStepper, compute_gradients, trainable_vlm
    from prismatic.vla.constants import LIBERO_CONSTANTS

    name, tuning, method = cfg.worker.split(",")
    preset = {"tiny": TINY, "mid": MID}[name]
    torch.manual_seed(0)
    vlm = init_vlm(preset, seed=0)
    vlm.set_num_images(2)
    module = trainable_vlm(vlm, use_lora=tuning == "lora", lora_rank=64 if name == "mid" else 8, lora_dropout=0.0)
    policy = VLAAdapterPolicy(module, LIBERO_CONSTANTS).train()
    craft_cfg = CRaFTConfig()
    use_craft = method == "craft"
    anchor = Anchor(policy.vlm, craft_cfg) if use_craft else None
    trainable = [p for p in policy.parameters() if p.requires_grad]
    craft_step = CRaFTStep(trainable, craft_cfg) if use_craft else None
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    ctx = DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    stepper = GradientStepper(
        model=policy,
        anchor=anchor,
        craft_step=craft_step,
        craft_cfg=craft_cfg,
        accum=cfg.grad_accumulation_steps,
        seed=0,
        ctx=ctx,
    )

    generator = torch.Generator().manual_seed(1234)  # the same batches for baseline and CRaFT
    batches = [
        random_batch(cfg.batch_size, generator=generator) for _ in range((cfg.steps + 1) * cfg.grad_accumulation_steps)
    ]
    stream = iter(batches)
    rss_before = resident_memory_gb()
    times = []
    for step in range(cfg.steps + 1):
        start = time.perf_counter()
        compute_gradients(stepper, stream, step, measure=use_craft)
        optimizer.step()
        if craft_step is not None:
            craft_step.commit()
        optimizer.zero_grad(set_to_none=True)
        if step > 0:
            times.append(time.perf_counter() - start)
    peak = peak_resident_memory_gb()
    return {
        "config": name,
        "tuning": tuning,
        "method": method,
        "trainable_parameters": sum(p.numel() for p in trainable),
        "step_s": round(sum(times) / len(times), 3),
        "peak_rss_gb": round(peak, 3),
        "training_rss_growth_gb": round(peak - rss_before, 3),
    }


@draccus.wrap()
def main(cfg: BenchCraftConfig) -> None:
    if cfg.worker:
        print(json.dumps(run_worker(cfg)))
        return
    results, ratios = [], []
    for name in cfg.configs:
        for tuning in cfg.tunings:
            pair = {}
            for method in ("baseline", "craft"):
                flags = {
                    "worker": f"{name},{tuning},{method}",
                    "steps": cfg.steps,
                    "batch_size": cfg.batch_size,
                    "grad_accumulation_steps": cfg.grad_accumulation_steps,
                }
                pair[method] = run_json_worker(__file__, flags, f"{name}/{tuning}/{method}")
                results.append(pair[method])
            base, craft = pair["baseline"], pair["craft"]
            ratios.append(
                {
                    "config": name,
                    "tuning": tuning,
                    "step_time_ratio": round(craft["step_s"] / base["step_s"], 3),
                    "peak_memory_ratio": round(craft["peak_rss_gb"] / base["peak_rss_gb"], 3),
                }
            )
    print(
        json.dumps(
            {
                "benchmark": "craft_overhead",
                "device": "cpu",
                "batch_size": cfg.batch_size,
                "grad_accumulation_steps": cfg.grad_accumulation_steps,
                "results": results,
                "ratios": ratios,
                "targets_with_lora": {"step_time_ratio": 1.5, "peak_memory_ratio": 1.15},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
