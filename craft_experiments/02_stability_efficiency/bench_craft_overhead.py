"""CRaFT's cost over the baseline: optimizer-step time and peak memory on the same batches, printed as JSON.

    python craft_experiments/02_stability_efficiency/bench_craft_overhead.py
    python craft_experiments/02_stability_efficiency/bench_craft_overhead.py --configs '[tiny]' --steps 10
    python craft_experiments/02_stability_efficiency/bench_craft_overhead.py --configs '[mid]' --tunings '[lora]' \
        --methods '[baseline,craft,craft_f0.25,craft_cache,craft_cache_f0.25]'

For each model size (tiny, mid) and tuning mode (LoRA, full fine-tuning), a baseline and CRaFT runs each execute
the same seeded micro-batches through the trainer's own step code (`compute_gradients` + AdamW), in separate
processes so that each peak is its own. Methods: `baseline`, `craft` (exact), `craft_f<F>` (`--craft_retention_fraction
F`), `craft_cache` (`--craft_cache_anchor_features True`), `craft_cache_f<F>` (both), and a `_slack<M>` suffix on any
of them (`--craft_slack_margin M`). The micro-batches are a fixed pool drawn again every step, so the cache is warm
after the warm-up step: the steady state of a run past its first epoch. A slack mode skips the retention gradient
only on steps whose constraint is slack; each result counts its timed steps that still computed it. Reported: mean
step time after one warm-up step, peak resident memory, and the growth of resident memory during the steps (what
training adds on top of the loaded model), and each method's ratios to the baseline.
"""

import itertools
import json
import re
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
    methods: list[str] = field(default_factory=lambda: ["baseline", "craft"])  # see the module docstring
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
    from prismatic.models.precision import Precision
    from prismatic.models.presets import MID, TINY
    from prismatic.training.distributed import DistContext
    from prismatic.training.trainer import GradientStepper, compute_gradients, trainable_vlm
    from prismatic.vla.constants import LIBERO_CONSTANTS

    name, tuning, method = cfg.worker.split(",")
    use_craft, craft_flags = parse_method(method)
    preset = {"tiny": TINY, "mid": MID}[name]
    torch.manual_seed(0)
    vlm = init_vlm(preset, seed=0)
    vlm.set_num_images(2)
    module = trainable_vlm(vlm, use_lora=tuning == "lora", lora_rank=64 if name == "mid" else 8, lora_dropout=0.0)
    policy = VLAAdapterPolicy(module, LIBERO_CONSTANTS).train()
    craft_cfg = CRaFTConfig(**craft_flags)
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
        precision=Precision.from_flag("fp32", ctx.device),
    )

    generator = torch.Generator().manual_seed(1234)  # the same batches for every method
    pool = []
    for index in range(cfg.grad_accumulation_steps):  # distinct frames per micro-batch, drawn again every step
        batch = random_batch(cfg.batch_size, generator=generator)
        batch.frame_ids[:, 0] = index
        pool.append(batch)
    stream = itertools.cycle(pool)
    rss_before = resident_memory_gb()
    times, with_retention_gradient = [], []
    for step in range(cfg.steps + 1):
        start = time.perf_counter()
        grads = compute_gradients(stepper, stream, step, measure=use_craft)
        if step > 0 and grads.craft_stats is not None:
            with_retention_gradient.append(grads.craft_stats.retention_gradient)
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
        "step_times_s": [round(seconds, 3) for seconds in times],
        "timed_steps_with_retention_gradient": sum(with_retention_gradient) if use_craft else None,
        "retention_gradient_per_step": with_retention_gradient if use_craft else None,
    }


def parse_method(method: str) -> tuple[bool, dict]:
    """A method name -> (whether CRaFT runs, its cheaper-mode CRaFTConfig fields)."""
    if method == "baseline":
        return False, {}
    match = re.fullmatch(r"craft(?P<cache>_cache)?(?:_f(?P<fraction>[0-9.]+))?(?:_slack(?P<margin>[0-9.]+))?", method)
    if match is None:
        raise SystemExit(
            f"--methods: unknown {method!r} (baseline, craft, then optionally _cache, _f<F>, _slack<M> in that order)"
        )
    flags: dict = {"cache_anchor_features": bool(match["cache"])}
    if match["fraction"]:
        flags["retention_fraction"] = float(match["fraction"])
    if match["margin"]:
        flags["slack_margin"] = float(match["margin"])
    return True, flags


@draccus.wrap()
def main(cfg: BenchCraftConfig) -> None:
    if cfg.worker:
        print(json.dumps(run_worker(cfg)))
        return
    for method in cfg.methods:
        parse_method(method)  # a bad method name stops before any run
    methods = ["baseline", *(method for method in cfg.methods if method != "baseline")]
    results, ratios = [], []
    for name in cfg.configs:
        for tuning in cfg.tunings:
            runs = {}
            for method in methods:
                flags = {
                    "worker": f"{name},{tuning},{method}",
                    "steps": cfg.steps,
                    "batch_size": cfg.batch_size,
                    "grad_accumulation_steps": cfg.grad_accumulation_steps,
                }
                runs[method] = run_json_worker(__file__, flags, f"{name}/{tuning}/{method}")
                results.append(runs[method])
            base = runs["baseline"]
            for method in methods[1:]:
                ratios.append(
                    {
                        "config": name,
                        "tuning": tuning,
                        "method": method,
                        "step_time_ratio": round(runs[method]["step_s"] / base["step_s"], 3),
                        "peak_memory_ratio": round(runs[method]["peak_rss_gb"] / base["peak_rss_gb"], 3),
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
                "targets_with_lora": {"craft": 1.5, "cheapest_mode_mid": 1.35, "peak_memory_ratio": 1.15},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
