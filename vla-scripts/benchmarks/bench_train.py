"""Benchmark of `finetune.py` itself, printed as JSON: steps/s, samples/s, data-wait share and peak memory.

    python vla-scripts/benchmarks/bench_train.py
    python vla-scripts/benchmarks/bench_train.py --configs '[tiny]' --steps 40
    python vla-scripts/benchmarks/bench_train.py --configs '[mid]' --methods '[baseline]' \
        --base_precisions '[fp32,bf16]'

Runs real short fine-tunes (LoRA, 2 cameras, augmentation, baseline and CRaFT) of the tiny and the mid-size VLM on
the synthetic LIBERO-Spatial data, each in its own process; the mid-size VLM folder is generated once under
`.cache/`. Rates are averaged over the steps after the first few (start-up excluded); memory is the peak resident
set of the training process.
"""

import itertools
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import draccus

REPO = Path(__file__).resolve().parents[2]


@dataclass
class BenchTrainConfig:
    configs: list[str] = field(default_factory=lambda: ["tiny", "mid"])
    methods: list[str] = field(default_factory=lambda: ["baseline", "craft"])
    base_precisions: list[str] = field(default_factory=lambda: ["auto"])  # --base_precision of each run
    data_root_dir: Path = REPO / "data/synthetic_libero"
    steps: int = 20  # tiny; mid runs steps // 4
    batch_size: int = 4
    grad_accumulation_steps: int = 2
    skip_first: int = 3  # steps excluded from the averages (graph warm-up, buffer filling)


def assets(name: str) -> tuple[Path, Path]:
    from prismatic.assets.config_bundle import write_config_bundle
    from prismatic.assets.tiny_vlm import init_vlm, write_tiny_assets
    from prismatic.models.presets import MID
    from prismatic.models.savers import write_prismatic_vlm_folder

    if name == "tiny":
        vlm, bundle, _ = write_tiny_assets(REPO / ".cache/bench/tiny-vlm", REPO / ".cache/bench/tiny-configs")
        return vlm, bundle
    vlm_dir, bundle = REPO / ".cache/bench/mid-vlm", REPO / ".cache/bench/mid-configs"
    if not (vlm_dir / "config.json").is_file():
        write_prismatic_vlm_folder(vlm_dir, init_vlm(MID, seed=0), overwrite=True)
    write_config_bundle(bundle, MID)
    return vlm_dir, bundle


@draccus.wrap()
def main(cfg: BenchTrainConfig) -> None:
    if not (cfg.data_root_dir / "libero_spatial_no_noops").is_dir():
        subprocess.run(
            [
                sys.executable,
                str(REPO / "vla-scripts/make_synthetic_libero.py"),
                "--data_root_dir",
                str(cfg.data_root_dir),
                "--suites",
                "[libero_spatial_no_noops]",
            ],
            check=True,
        )
    results = []
    for name in cfg.configs:
        vlm_dir, bundle = assets(name)
        steps = cfg.steps if name == "tiny" else max(cfg.skip_first + 2, cfg.steps // 4)
        for method, precision in itertools.product(cfg.methods, cfg.base_precisions):
            runs = REPO / ".cache/bench/runs"
            run_id = f"bench-{name}-{method}-{precision}"
            subprocess.run(["rm", "-rf", str(runs / run_id), *map(str, runs.glob(f"{run_id}--*"))], check=True)
            args = [
                sys.executable,
                str(REPO / "vla-scripts/finetune.py"),
                "--vlm_path",
                str(vlm_dir),
                "--config_file_path",
                str(bundle),
                "--data_root_dir",
                str(cfg.data_root_dir),
                "--dataset_name",
                "libero_spatial_no_noops",
                "--run_root_dir",
                str(runs),
                "--run_id_override",
                run_id,
                "--batch_size",
                str(cfg.batch_size),
                "--grad_accumulation_steps",
                str(cfg.grad_accumulation_steps),
                "--max_steps",
                str(steps),
                "--save_freq",
                str(steps),
                "--lora_rank",
                "64" if name == "mid" else "16",
                "--use_craft",
                str(method == "craft"),
                "--shuffle_buffer_size",
                "5000",
                "--base_precision",
                precision,
            ]
            proc = subprocess.run(args, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise SystemExit(f"{name}/{method} failed:\n{proc.stderr[-3000:]}")
            rows = [json.loads(line) for line in (runs / run_id / "metrics.jsonl").read_text().splitlines()]
            timed = rows[cfg.skip_first :]
            samples_per_s = sum(r["VLA Train/Samples per Second"] for r in timed) / len(timed)
            results.append(
                {
                    "config": name,
                    "method": method,
                    "base_precision": precision,
                    "steps_timed": len(timed),
                    "global_batch": cfg.batch_size * cfg.grad_accumulation_steps,
                    "steps_per_s": round(samples_per_s / (cfg.batch_size * cfg.grad_accumulation_steps), 3),
                    "samples_per_s": round(samples_per_s, 2),
                    "data_wait_share": round(sum(r["VLA Train/Data Wait Share"] for r in timed) / len(timed), 3),
                    "peak_rss_gb": round(max(r["System/Peak CPU Memory GB"] for r in rows), 2),
                }
            )
    print(json.dumps({"benchmark": "finetune", "device": "cpu", "results": results}, indent=2))


if __name__ == "__main__":
    main()
