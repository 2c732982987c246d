"""Baseline vs CRaFT on the tiny assets: retention loss, lambda and conflict ratio over a short fine-tune.

    python craft_experiments/02_stability_efficiency/retention_demo.py            # ~7 minutes on 2 CPU cores
    python craft_experiments/02_stability_efficiency/retention_demo.py --steps 60 --budget 0.01

Runs three fine-tunes with identical data, seed and hyper-parameters: a baseline that measures the CRaFT
diagnostics every step without changing its update (`--craft_measure_freq 1`), CRaFT, and CRaFT without the
gradient projection (where only lambda holds the drift, so it settles near the budget). Writes
`<out_dir>/retention_demo.json` (per-step series and a summary) and `<out_dir>/retention_demo.png`, and prints the
summary. Needs the demo assets (`bash vla-scripts/run_demo.sh` builds them).
"""

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import draccus

REPO = Path(__file__).resolve().parents[2]
METHODS = ("baseline", "craft", "craft_no_projection")


@dataclass
class RetentionDemoConfig:
    vlm_path: Path = REPO / "pretrained_models/prism-qwen25-tiny-dinosiglip-224px"
    config_file_path: Path = REPO / "pretrained_models/configs-tiny"
    data_root_dir: Path = REPO / "data/synthetic_libero"
    out_dir: Path = REPO / "runs/retention_demo"
    steps: int = 120
    budget: float = 0.01  # epsilon; small, so that the tiny model's drift crosses it within a short run
    dual_lr: float = 1.0  # fast dual ascent for a short run (the guide's default is 0.01 for 20k-step runs)
    learning_rate: float = 1e-3
    seed: int = 7


def run(cfg: RetentionDemoConfig, method: str) -> list[dict]:
    args = [
        "--vlm_path",
        cfg.vlm_path,
        "--config_file_path",
        cfg.config_file_path,
        "--data_root_dir",
        cfg.data_root_dir,
        "--dataset_name",
        "libero_spatial_no_noops",
        "--run_root_dir",
        cfg.out_dir,
        "--run_id_override",
        method,
        "--batch_size",
        4,
        "--grad_accumulation_steps",
        2,
        "--learning_rate",
        cfg.learning_rate,
        "--lora_rank",
        16,
        "--max_steps",
        cfg.steps,
        "--save_freq",
        cfg.steps,
        "--console_log_freq",
        20,
        "--seed",
        cfg.seed,
        "--shuffle_buffer_size",
        5000,
        "--craft_retention_budget",
        cfg.budget,
        "--craft_dual_lr",
        cfg.dual_lr,
    ]
    if method == "baseline":
        args += ["--craft_measure_freq", 1]
    else:
        args += ["--use_craft", "True", "--craft_enable_projection", method == "craft"]
    proc = subprocess.run(
        [sys.executable, str(REPO / "vla-scripts/finetune.py"), *map(str, args)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"the {method} run failed:\n{proc.stdout[-3000:]}")
    return [json.loads(line) for line in (cfg.out_dir / method / "metrics.jsonl").read_text().splitlines()]


def summary(rows: list[dict], budget: float) -> dict:
    tail = rows[len(rows) * 3 // 4 :]  # the last quarter of the run

    def mean(key: str, part: list[dict]) -> float:
        return sum(r[key] for r in part) / len(part)

    return {
        "retention_loss_max": max(r["CRaFT/Retention Loss"] for r in rows),
        "retention_loss_last_quarter": mean("CRaFT/Retention Loss", tail),
        "retention_over_budget_last_quarter": mean("CRaFT/Retention Loss", tail) / budget,
        "lambda_max": max(r["CRaFT/Lambda After"] for r in rows),
        "lambda_last": rows[-1]["CRaFT/Lambda After"],
        "conflict_ratio_first_quarter": mean("CRaFT/Conflict Ratio", rows[: max(1, len(rows) // 4)]),
        "conflict_ratio_last_quarter": mean("CRaFT/Conflict Ratio", tail),
        "action_loss_first_10": mean("VLA Train/Loss", rows[:10]),
        "action_loss_last_quarter": mean("VLA Train/Loss", tail),
    }


def plot(series: dict[str, list[dict]], budget: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 3.6))
    panels = [
        ("CRaFT/Retention Loss", "retention loss"),
        ("CRaFT/Lambda After", "lambda"),
        ("CRaFT/Conflict Ratio", "conflict ratio"),
        ("VLA Train/Loss", "action L1 loss"),
    ]
    for ax, (key, title) in zip(axes, panels, strict=True):
        for method, rows in series.items():
            ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=method)
        if key == "CRaFT/Retention Loss":
            ax.axhline(budget, color="gray", linestyle="--", label="budget")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


@draccus.wrap()
def main(cfg: RetentionDemoConfig) -> None:
    for path in (cfg.vlm_path, cfg.config_file_path, cfg.data_root_dir / "libero_spatial_no_noops"):
        if not Path(path).exists():
            raise SystemExit(f"{path} is missing: run `bash vla-scripts/run_demo.sh` first to build the demo assets")
    shutil.rmtree(cfg.out_dir, ignore_errors=True)
    series = {method: run(cfg, method) for method in METHODS}
    result = {
        "budget": cfg.budget,
        "dual_lr": cfg.dual_lr,
        "steps": cfg.steps,
        "summary": {method: summary(rows, cfg.budget) for method, rows in series.items()},
        "series": {
            method: [
                {
                    k: r[k]
                    for k in (
                        "step",
                        "VLA Train/Loss",
                        "CRaFT/Retention Loss",
                        "CRaFT/Lambda After",
                        "CRaFT/Conflict Ratio",
                    )
                }
                for r in rows
            ]
            for method, rows in series.items()
        },
    }
    (cfg.out_dir / "retention_demo.json").write_text(json.dumps(result, indent=2))
    plot(series, cfg.budget, cfg.out_dir / "retention_demo.png")
    print(json.dumps({"budget": cfg.budget, "summary": result["summary"]}, indent=2))
    print(f"series and plot: {cfg.out_dir}/retention_demo.json, {cfg.out_dir}/retention_demo.png")


if __name__ == "__main__":
    main()
