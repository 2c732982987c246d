"""Benchmark of the evaluation path, printed as JSON: batched policy queries/s and environment steps/s per worker.

    python vla-scripts/benchmarks/bench_eval.py
    python vla-scripts/benchmarks/bench_eval.py --configs '[tiny]' --batch_sizes '[1,8,32]'

Policy queries go through the exact evaluation code (JPEG round trip, lanczos resize, centre crop, batched forward,
un-normalisation, gripper conversion) with random weights: tiny and full size, on this machine's CPU. Environment
throughput is measured for the stand-in environment of the tests (the runner's own overhead) and, when the LIBERO
simulator and its assets are installed, for a real LIBERO-Spatial environment.
"""

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import draccus
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]


@dataclass
class BenchEvalConfig:
    configs: list[str] = field(default_factory=lambda: ["tiny", "full"])
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4, 8])
    repeats: int = 3
    env_steps: int = 200


def policy_throughput(name: str, batch_sizes: list[int], repeats: int) -> list[dict]:
    from prismatic.assets.config_bundle import write_config_bundle
    from prismatic.assets.tiny_vlm import init_vlm
    from prismatic.eval.policy_adapter import ChunkPolicy
    from prismatic.models.inference import ActionPredictor
    from prismatic.models.policy import VLAAdapterPolicy
    from prismatic.models.presets import FULL, TINY
    from prismatic.models.tokenizer import load_tokenizer
    from prismatic.vla.constants import LIBERO_CONSTANTS

    preset = {"tiny": TINY, "full": FULL}[name]
    vlm = init_vlm(preset, seed=0)
    vlm.set_num_images(2)
    stats = {
        "libero_spatial_no_noops": {
            "action": {"q01": [-1.0] * 7, "q99": [1.0] * 7, "mask": [True] * 6 + [False]},
            "proprio": {"q01": [-1.0] * 8, "q99": [1.0] * 8},
        }
    }
    bundle = write_config_bundle(REPO / ".cache" / f"bench-bundle-{name}", preset, overwrite=True)
    predictor = ActionPredictor(VLAAdapterPolicy(vlm, LIBERO_CONSTANTS), load_tokenizer(bundle), stats)
    policy = ChunkPolicy(predictor, num_images=2, center_crop=True)
    rng = np.random.default_rng(0)
    out = []
    for batch in batch_sizes:
        requests = [
            {
                "images": [rng.integers(0, 255, (256, 256, 3), dtype=np.uint8) for _ in range(2)],
                "state": rng.normal(size=8).astype(np.float32),
                "instruction": "pick up the black bowl next to the ramekin and place it on the plate",
            }
            for _ in range(batch)
        ]
        policy(requests)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            policy(requests)
        elapsed = (time.perf_counter() - start) / repeats
        out.append(
            {
                "config": name,
                "batch_size": batch,
                "seconds_per_call": round(elapsed, 3),
                "queries_per_s": round(batch / elapsed, 2),
            }
        )
    return out


def env_throughput(steps: int) -> list[dict]:
    sys.path.insert(0, str(REPO / "tests"))
    from helpers.fake_libero import FakeLiberoFactory

    from prismatic.eval.protocol import WAIT_ACTION

    results = []
    handle = FakeLiberoFactory({"0": [{}]}).make("libero_spatial", 0, 256, 0)
    handle.env.set_init_state(handle.initial_states[0])
    start = time.perf_counter()
    for _ in range(steps):
        handle.env.step(list(WAIT_ACTION))
    results.append(
        {"environment": "stand-in (runner overhead)", "steps_per_s": round(steps / (time.perf_counter() - start), 1)}
    )
    try:
        from prismatic.eval.libero_env import LiberoEnvFactory, configure_libero

        configure_libero()
        real = LiberoEnvFactory().make("libero_spatial", 0, 256, 0)
        real.env.set_init_state(real.initial_states[0])
        start = time.perf_counter()
        for _ in range(min(steps, 50)):
            real.env.step(list(WAIT_ACTION))
        results.append(
            {
                "environment": "LIBERO-Spatial task 0, 2 cameras 256px",
                "steps_per_s": round(min(steps, 50) / (time.perf_counter() - start), 2),
            }
        )
    except (ModuleNotFoundError, FileNotFoundError) as err:
        results.append({"environment": "LIBERO", "skipped": str(err).split(":")[0]})
    return results


@draccus.wrap()
def main(cfg: BenchEvalConfig) -> None:
    torch.manual_seed(0)
    policy = [row for name in cfg.configs for row in policy_throughput(name, cfg.batch_sizes, cfg.repeats)]
    print(
        json.dumps(
            {
                "benchmark": "evaluation",
                "device": "cpu",
                "threads": torch.get_num_threads(),
                "policy": policy,
                "environment": env_throughput(cfg.env_steps),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
