"""Training metrics: the guide's console line, `train_progress.log`, `metrics.jsonl` and WandB (rank 0 only)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from prismatic.util.benchmarking import peak_resident_memory_gb

# WandB / metrics.jsonl keys, exactly as the user's guide names them.
LOSS = "VLA Train/Loss"
CURR_L1 = "VLA Train/Curr Action L1 Loss"
NEXT_L1 = "VLA Train/Next Actions L1 Loss"
GRAD_NORM = "VLA Train/Gradient Norm"
LR = "VLA Train/Learning Rate"
SAMPLES_PER_S = "VLA Train/Samples per Second"
DATA_WAIT = "VLA Train/Data Wait Share"
SKIPPED = "VLA Train/Skipped Steps"
PEAK_CPU_MEMORY = "System/Peak CPU Memory GB"
PEAK_GPU_MEMORY = "System/Peak GPU Memory GB"
RET = "CRaFT/Retention Loss"
RET_NONFINITE = "CRaFT/Retention NonFinite"
LAMBDA = "CRaFT/Lambda"
LAMBDA_BEFORE = "CRaFT/Lambda Before"
LAMBDA_AFTER = "CRaFT/Lambda After"
CONFLICT = "CRaFT/Conflict Ratio"


def peak_memory_gb(device_type: str) -> dict[str, float]:
    """Peak resident memory of this process (and peak allocated CUDA memory on GPUs), in GB."""
    import torch

    out = {PEAK_CPU_MEMORY: peak_resident_memory_gb()}
    if device_type == "cuda":
        out[PEAK_GPU_MEMORY] = torch.cuda.max_memory_allocated() / 2**30
    return out


def _num(value: float | None, fmt: str) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return "nan" if math.isnan(value) else "inf"
    return format(value, fmt)


def progress_line(step: int, max_steps: int, metrics: dict[str, float], budget: float) -> str:
    """`Step 1234/20000 | Loss: 0.1234 | Ret: 0.0821/0.1000 | λ: 0.000->0.000 | Conflict: 12.34% | GradNorm: 1.23 |
    LR: 5.00e-04`; CRaFT fields read `-` on steps where they were not measured."""
    if RET in metrics:
        ret = f"{_num(metrics[RET], '.4f')}/{budget:.4f}"
        lam = f"{_num(metrics[LAMBDA_BEFORE], '.3f')}->{_num(metrics[LAMBDA_AFTER], '.3f')}"
        conflict = f"{_num(100 * metrics[CONFLICT], '.2f')}%"
    else:
        ret, lam, conflict = "-", "-", "-"
    return (
        f"Step {step}/{max_steps} | Loss: {_num(metrics.get(LOSS), '.4f')} | Ret: {ret} | λ: {lam} | "
        f"Conflict: {conflict} | GradNorm: {_num(metrics.get(GRAD_NORM), '.2f')} | LR: {_num(metrics.get(LR), '.2e')}"
    )


@dataclass
class MetricsSinks:
    """Where rank 0 writes metrics; other ranks hold an inactive instance."""

    run_dir: Path
    active: bool
    console_log_freq: int
    wandb_log_freq: int
    max_steps: int
    budget: float
    wandb_run: Any = None
    _progress: TextIO | None = None
    _jsonl: TextIO | None = None

    def open(self) -> MetricsSinks:
        if self.active:
            self._progress = (self.run_dir / "train_progress.log").open("a", encoding="utf-8")
            self._jsonl = (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8")
        return self

    def log(self, step: int, metrics: dict[str, float]) -> str | None:
        """Record one optimizer step; returns the console line when one is due."""
        if not self.active:
            return None
        assert self._jsonl is not None and self._progress is not None
        self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self._jsonl.flush()
        if self.wandb_run is not None and (step % self.wandb_log_freq == 0 or step == self.max_steps):
            self.wandb_run.log(metrics, step=step)
        if step % self.console_log_freq == 0 or step == self.max_steps:
            line = progress_line(step, self.max_steps, metrics, self.budget)
            self._progress.write(line + "\n")
            self._progress.flush()
            tqdm.write(line)
            return line
        return None

    def message(self, text: str) -> None:
        """A one-off notice (skipped step, checkpoint saved, ...) on the console and in the progress log."""
        if self.active:
            assert self._progress is not None
            self._progress.write(text + "\n")
            self._progress.flush()
            tqdm.write(text)

    def close(self) -> None:
        for f in (self._progress, self._jsonl):
            if f is not None:
                f.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def init_wandb(project: str, entity: str | None, mode: str, run_id: str, run_dir: Path, config: dict[str, Any]) -> Any:
    """Start (or, on resume, continue) the WandB run; a failure says how to run without it."""
    import wandb

    try:
        return wandb.init(
            project=project,
            entity=entity,
            name=run_id,
            id=run_id.replace("+", "-")[:120],
            resume="allow",
            mode=mode,
            dir=str(run_dir),
            config=config,
        )
    except Exception as err:
        raise RuntimeError(
            f"WandB could not start ({err}). Log in (`wandb login`), use --wandb_mode offline, or --use_wandb False"
        ) from err
