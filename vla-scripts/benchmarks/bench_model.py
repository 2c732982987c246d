"""Benchmark: forward + backward time and peak memory of the policy at batch 1, printed as JSON.

    python vla-scripts/benchmarks/bench_model.py                       # tiny, mid and full
    python vla-scripts/benchmarks/bench_model.py --configs '[tiny]' --iterations 5

Each configuration runs in its own process so that peak resident memory (ru_maxrss) is its own. The policy is
VLA-Adapter-Pro with LoRA (rank 64; 8 for tiny), 2 images, proprio, a 56-token prompt + 64 action queries, fp32 on
the CPU with torch's default threads.
"""

import json
import time
from dataclasses import dataclass, field

import draccus
import torch

from prismatic.models.batch import random_batch
from prismatic.models.lora import LoRASettings, apply_lora
from prismatic.models.policy import VLAAdapterPolicy
from prismatic.models.presets import FULL, MID, TINY
from prismatic.models.vlm import PrismaticVLM
from prismatic.util.benchmarking import peak_resident_memory_gb, run_json_worker
from prismatic.vla.constants import LIBERO_CONSTANTS

CONFIGS = {"tiny": (TINY, 8), "mid": (MID, 64), "full": (FULL, 64)}


@dataclass
class BenchModelConfig:
    configs: list[str] = field(default_factory=lambda: ["tiny", "mid", "full"])
    iterations: int = 3  # timed forward+backward passes after one warm-up pass
    worker: str = ""  # internal: run one configuration in this process


def run_one(name: str, iterations: int) -> dict:
    preset, rank = CONFIGS[name]
    torch.manual_seed(0)
    start = time.perf_counter()
    policy = VLAAdapterPolicy(
        apply_lora(PrismaticVLM(preset, num_images=2), LoRASettings(rank=rank)), LIBERO_CONSTANTS
    ).train()
    build_s = time.perf_counter() - start
    batch = random_batch(1, generator=torch.Generator().manual_seed(0))
    times = []
    for iteration in range(iterations + 1):
        t0 = time.perf_counter()
        policy(batch).actions.abs().mean().backward()
        policy.zero_grad(set_to_none=True)
        if iteration > 0:
            times.append(time.perf_counter() - t0)
    params = sum(p.numel() for p in policy.parameters())
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    return {
        "config": name,
        "parameters": params,
        "trainable_parameters": trainable,
        "build_s": round(build_s, 2),
        "fwd_bwd_s_mean": round(sum(times) / len(times), 3),
        "fwd_bwd_s_min": round(min(times), 3),
        "peak_rss_gb": round(peak_resident_memory_gb(), 2),
        "threads": torch.get_num_threads(),
    }


@draccus.wrap()
def main(cfg: BenchModelConfig) -> None:
    if cfg.worker:
        print(json.dumps(run_one(cfg.worker, cfg.iterations)))
        return
    results = []
    for name in cfg.configs:
        if name not in CONFIGS:
            raise SystemExit(f"--configs: unknown {name!r}; choose from {sorted(CONFIGS)}")
        results.append(run_json_worker(__file__, {"worker": name, "iterations": cfg.iterations}, name))
    print(json.dumps({"benchmark": "policy_forward_backward_batch1", "device": "cpu", "results": results}, indent=2))


if __name__ == "__main__":
    main()
