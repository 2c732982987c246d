"""Training metrics: the guide's console line, `train_progress.log`, `metrics.jsonl` and WandB (rank 0 only)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from tqdm import tqdm

from prismatic.util.atomic_io import atomic_write_text
from prismatic.util.benchmarking import peak_resident_memory_gb
from prismatic.util.cli import UserInputError
from prismatic.util.wandb_settings import WandbSettings

if TYPE_CHECKING:
    from craft import CRaFTStepStats

# WandB / metrics.jsonl keys, exactly as the user's guide names them.
LOSS = "VLA Train/Loss"
CURR_L1 = "VLA Train/Curr Action L1 Loss"
NEXT_L1 = "VLA Train/Next Actions L1 Loss"
GRAD_NORM = "VLA Train/Gradient Norm"
LR = "VLA Train/Learning Rate"
UPDATE_RATIO = "VLA Train/Update Ratio"  # ||update|| / ||weights|| of the step (NaN when the step was skipped early)
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
NUM_CONFLICTING = "CRaFT/Num Conflicting"
NUM_BOTH = "CRaFT/Num Both"
ACT_GRAD_NORM = "CRaFT/Action Grad Norm"
RET_GRAD_NORM = "CRaFT/Retention Grad Norm"
RET_GRAD_STEP = "CRaFT/Retention Grad Step"
GUIDE_METRICS = (
    LOSS,
    CURR_L1,
    NEXT_L1,
    GRAD_NORM,
    LR,
    RET,
    RET_NONFINITE,
    LAMBDA,
    LAMBDA_BEFORE,
    LAMBDA_AFTER,
    CONFLICT,
)

METRICS_FILE = "metrics.jsonl"
PROGRESS_LOG = "train_progress.log"
VALIDATION_PREFIX = "VLA Val/"  # metrics of `--use_val_set` (prismatic/training/validation.py)
# A progress-log line that belongs to a step: `Step 12/100 | ...` or `[finetune] step 12: ...`.
_STEP_LINE = re.compile(r"^(?:Step (\d+)/|\[[\w-]+\] step (\d+):)")


def craft_metrics(stats: CRaFTStepStats, update_taken: bool = True) -> dict[str, float]:
    """The guide's `CRaFT/...` keys of a step's CRaFT statistics. On a skipped step lambda did not move, so both
    `Lambda` and `Lambda After` (the guide names the same value twice) report the lambda before."""
    lambda_after = stats.lambda_after if update_taken else stats.lambda_before
    return {
        RET: stats.retention_loss,
        RET_NONFINITE: stats.retention_nonfinite,
        LAMBDA: lambda_after,
        LAMBDA_BEFORE: stats.lambda_before,
        LAMBDA_AFTER: lambda_after,
        CONFLICT: stats.conflict_ratio,
        NUM_CONFLICTING: float(stats.num_conflicting),
        NUM_BOTH: float(stats.num_both),
        ACT_GRAD_NORM: stats.act_grad_norm,
        RET_GRAD_NORM: stats.ret_grad_norm,
        RET_GRAD_STEP: float(stats.retention_gradient),
    }


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

    def open(self, start_step: int = 0, history_from: Path | None = None) -> MetricsSinks:
        """Open the logs for appending, first cut back to `start_step`: a resumed run trains again the steps a crash
        left after its checkpoint, and a fresh run starts empty. A run that branches off another run's checkpoint
        starts with that run's history up to `start_step`."""
        if self.active:
            truncate_logs(history_from if history_from is not None else self.run_dir, self.run_dir, start_step)
            self._progress = (self.run_dir / PROGRESS_LOG).open("a", encoding="utf-8")
            self._jsonl = (self.run_dir / METRICS_FILE).open("a", encoding="utf-8")
        return self

    def log(self, step: int, metrics: dict[str, float]) -> str | None:
        """Record one optimizer step; returns the console line when one is due."""
        if not self.active:
            return None
        assert self._jsonl is not None and self._progress is not None
        self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self._jsonl.flush()
        validated = any(key.startswith(VALIDATION_PREFIX) for key in metrics)  # rare: never held back
        if self.wandb_run is not None and (step % self.wandb_log_freq == 0 or step == self.max_steps or validated):
            self.wandb_run.log(metrics, step=step)
        if step % self.console_log_freq == 0 or step == self.max_steps:
            line = progress_line(step, self.max_steps, metrics, self.budget)
            self._progress.write(line + "\n")
            self._progress.flush()
            tqdm.write(line)
            return line
        return None

    def message(self, text: str, step: int | None = None) -> None:
        """A one-off notice on the console and in the progress log; tagged `[finetune] step N:` when it belongs to
        a step, so that a resume can cut the log back to its checkpoint."""
        if self.active:
            text = f"[finetune] step {step}: {text}" if step is not None else f"[finetune] {text}"
            assert self._progress is not None
            self._progress.write(text + "\n")
            self._progress.flush()
            tqdm.write(text)

    def close(self) -> None:
        for handle in (self._progress, self._jsonl):
            if handle is not None:
                handle.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of a `metrics.jsonl`, one per step (the last one written wins), in step order; a line torn by a crash
    is skipped."""
    rows: dict[int, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows[row["step"]] = row
    return [rows[step] for step in sorted(rows)]


def truncate_logs(source_dir: Path, run_dir: Path, step: int) -> None:
    """Write `run_dir`'s logs as `source_dir`'s up to `step`: metrics rows of steps <= step, and the progress log up
    to its first line of a later step (both rewritten atomically)."""
    rows = [row for row in read_metrics(source_dir / METRICS_FILE) if row["step"] <= step]
    atomic_write_text(run_dir / METRICS_FILE, "".join(json.dumps(row) + "\n" for row in rows))
    progress = source_dir / PROGRESS_LOG
    kept = []
    for line in progress.read_text(encoding="utf-8").splitlines(keepends=True) if progress.is_file() else []:
        match = _STEP_LINE.match(line)
        if match and int(match.group(1) or match.group(2)) > step:
            break
        kept.append(line)
    atomic_write_text(run_dir / PROGRESS_LOG, "".join(kept))


def init_wandb(settings: WandbSettings, run_id: str, config: dict[str, Any]) -> Any:
    """Start (or, on resume, continue) the WandB run; a failure says how to run without it."""
    if settings.mode == "disabled":
        return None
    import wandb

    if settings.dir is not None:
        settings.dir.mkdir(parents=True, exist_ok=True)
    try:
        return wandb.init(
            project=settings.project,
            entity=settings.entity,
            name=run_id,
            id=run_id.replace("+", "-")[:120],
            resume="allow",
            mode=settings.mode,
            dir=str(settings.dir) if settings.dir is not None else None,
            config=config,
        )
    except Exception as err:
        raise UserInputError(
            f"WandB could not start ({' '.join(str(err).split())}). Log in (`wandb login`), or run without it: "
            "WANDB_MODE=offline (or --wandb_mode offline), or --use_wandb False"
        ) from err
