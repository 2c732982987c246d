"""Benchmark of the data path, printed as JSON: samples/s and resident memory.

    python vla-scripts/benchmarks/bench_data.py --data_root_dir data/synthetic_libero

Measures the whole path (read, decode, resize, augment, batch transform, collate into batches of `batch_size`) for
1 and 2 cameras with and without augmentation, a naive configuration (sequential maps, no prefetch) in the same
run, and resident memory while streaming `memory_samples` samples with the default shuffle buffer. Each
configuration runs in a fresh process and reports the CPU cores it kept busy: TensorFlow parallelises inside its
ops, so even the sequential pipeline uses more than one core, which bounds the attainable speed-up on a small
machine. Generates the synthetic LIBERO-Spatial data first if it is missing.
"""

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import draccus

from prismatic.util.benchmarking import peak_resident_memory_gb, resident_memory_gb, run_json_worker

CONFIGS = {
    "1cam": {"num_images": 1, "image_aug": False},
    "1cam_aug": {"num_images": 1, "image_aug": True},
    "2cam": {"num_images": 2, "image_aug": False},
    "2cam_aug": {"num_images": 2, "image_aug": True},
    "2cam_aug_naive": {"num_images": 2, "image_aug": True, "num_parallel_calls": 1, "prefetch": False},
}


@dataclass
class BenchDataConfig:
    data_root_dir: Path = Path("data/synthetic_libero")
    dataset_name: str = "libero_spatial_no_noops"
    config_file_path: Path = Path("pretrained_models/configs-tiny")  # for the tokenizer
    configs: list[str] = field(default_factory=lambda: list(CONFIGS))
    batch_size: int = 16
    num_batches: int = 100  # timed batches per configuration (after 3 warm-up batches)
    memory_samples: int = 10_000  # streamed for the memory measurement (2 cameras, augmentation)
    worker: str = ""  # internal


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads): cores used = CPU seconds / wall seconds."""
    times = os.times()
    return times.user + times.system


def run_worker(cfg: BenchDataConfig) -> dict:
    from torch.utils.data import DataLoader

    from prismatic.models.batch import PaddedCollatorForActionPrediction, RLDSBatchTransform
    from prismatic.models.tokenizer import load_tokenizer
    from prismatic.vla.datasets import RLDSDataset

    tokenizer = load_tokenizer(cfg.config_file_path)
    if cfg.worker == "memory":
        dataset = RLDSDataset(
            cfg.data_root_dir, cfg.dataset_name, RLDSBatchTransform(tokenizer), num_images=2, image_aug=True
        )
        trace = []
        start = time.perf_counter()
        for count, _ in enumerate(dataset, 1):
            if count % 1000 == 0:
                trace.append(round(resident_memory_gb(), 3))
            if count >= cfg.memory_samples:
                break
        return {
            "config": "memory_2cam_aug",
            "samples": cfg.memory_samples,
            "shuffle_buffer_frames": dataset.info.shuffle_buffer_size,
            "rss_gb_every_1000_samples": trace,
            "rss_growth_after_first_1000_gb": round(trace[-1] - trace[0], 3),
            "samples_per_s": round(cfg.memory_samples / (time.perf_counter() - start), 1),
        }
    options = dict(CONFIGS[cfg.worker])
    dataset = RLDSDataset(cfg.data_root_dir, cfg.dataset_name, RLDSBatchTransform(tokenizer), **options)
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        num_workers=0,
        collate_fn=PaddedCollatorForActionPrediction(tokenizer.pad_token_id),
    )
    batches = iter(loader)
    for _ in range(3):
        next(batches)
    start, cpu_start = time.perf_counter(), cpu_seconds()
    for _ in range(cfg.num_batches):
        next(batches)
    elapsed = time.perf_counter() - start
    return {
        "config": cfg.worker,
        **options,
        "samples_per_s": round(cfg.num_batches * cfg.batch_size / elapsed, 1),
        "cpu_cores_used": round((cpu_seconds() - cpu_start) / elapsed, 2),
        "peak_rss_gb": round(peak_resident_memory_gb(), 2),
    }


@draccus.wrap()
def main(cfg: BenchDataConfig) -> None:
    if cfg.worker:
        print(json.dumps(run_worker(cfg)))
        return
    if not (cfg.data_root_dir / cfg.dataset_name).is_dir():
        subprocess.run(
            [
                sys.executable,
                "vla-scripts/make_synthetic_libero.py",
                "--data_root_dir",
                str(cfg.data_root_dir),
                "--suites",
                f"[{cfg.dataset_name}]",
            ],
            check=True,
        )
    results = []
    for name in [*cfg.configs, "memory"]:
        if name != "memory" and name not in CONFIGS:
            raise SystemExit(f"--configs: unknown {name!r}; choose from {sorted(CONFIGS)}")
        flags = {
            "worker": name,
            "data_root_dir": cfg.data_root_dir,
            "dataset_name": cfg.dataset_name,
            "config_file_path": cfg.config_file_path,
            "batch_size": cfg.batch_size,
            "num_batches": cfg.num_batches,
            "memory_samples": cfg.memory_samples,
        }
        results.append(run_json_worker(__file__, flags, name))
    by_name = {r["config"]: r for r in results}
    summary = {}
    if "2cam_aug" in by_name and "2cam_aug_naive" in by_name:
        summary["speedup_vs_naive_2cam_aug"] = round(
            by_name["2cam_aug"]["samples_per_s"] / by_name["2cam_aug_naive"]["samples_per_s"], 2
        )
    print(
        json.dumps(
            {"benchmark": "rlds_data_path", "cpu_count": os.cpu_count(), "results": results, "summary": summary},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
