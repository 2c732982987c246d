"""Run state: what a run saves to continue exactly, and the one place that knows checkpoint folders and file names.

    runs/<run_id>--<step>_chkpt/
    ├── config.json                            model config (+ `vla_adapter` section: how the policy was built)
    ├── processor_config.json, preprocessor_config.json, tokenizer files, generation_config.json
    ├── lora_adapter/                          LoRA weights and the trained action queries (LoRA runs)
    ├── model.safetensors                      full VLM weights (full fine-tuning, or --merge_lora_during_training)
    ├── action_head--<step>_checkpoint.pt
    ├── proprio_projector--<step>_checkpoint.pt
    ├── action_queries--<step>_checkpoint.pt
    ├── dataset_statistics.json
    ├── finetune_config.yaml                   every flag of the run (resume reads it)
    ├── training_state.pt                      step, optimizer, learning-rate schedule, RNG states of every rank,
    │                                          data position, CRaFT state (lambda), counters
    └── manifest.json                          size and sha256 of every file above, written last

A folder is assembled under a hidden staging name and renamed when complete, never over an existing one; files are
plain tensors / JSON / YAML (nothing is unpickled when they are read back). `runs/<run_id>/latest_checkpoint.txt`
names the newest checkpoint and never moves backwards.

The trainer builds a `TrainingState` over its live objects and calls `save(step)` / `restore(info)`; resumes start
with `inspect_checkpoint`, which verifies and reads a folder before anything expensive is built.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict

from craft import CRaFTStep
from prismatic.models.loaders import PolicySpec, check_action_queries, load_component
from prismatic.models.lora import ADAPTER_WEIGHTS
from prismatic.models.policy import VLAAdapterPolicy
from prismatic.models.precision import MERGED_DTYPES
from prismatic.models.savers import component_filename, merged_state_dict, save_vlm_weights, write_policy_files
from prismatic.models.state_dicts import TIED_LM_HEAD, CheckpointMismatchError, load_state_dict_strict
from prismatic.training.config import CONFIG_SNAPSHOT, TRAINING_STATE, FinetuneConfig, config_snapshot_text
from prismatic.training.distributed import DistContext, barrier, gather_objects, rng_state, set_rng_state
from prismatic.training.schedule import LRSchedule
from prismatic.util.atomic_io import atomic_write_text, staged_directory
from prismatic.util.checkpoint_io import (
    MANIFEST,
    CheckpointFileError,
    load_safetensors_file,
    load_tensor_file,
    read_manifest,
    verify_manifest,
    write_manifest,
)

DATASET_STATISTICS = "dataset_statistics.json"
LORA_ADAPTER = "lora_adapter"
MERGED_WEIGHTS = "model.safetensors"
LATEST_POINTER = "latest_checkpoint.txt"
STATE_FORMAT_VERSION = 2
EXPLODED_WEIGHT = 1e6  # no trained weight of this model is anywhere near this; above it the run has blown up
_CHECKPOINT_NAME = re.compile(r"^(?P<run_id>.+)--(?P<step>\d+)_chkpt$")


class NonFiniteTrainingError(RuntimeError):
    """Training diverged: too many skipped steps in a row, or weights that must not be saved."""


def checkpoint_step(folder: str | Path) -> int | None:
    """The step a checkpoint folder holds, from its name (`...--<step>_chkpt`)."""
    match = _CHECKPOINT_NAME.match(Path(folder).name)
    return int(match["step"]) if match else None


def infer_checkpoint_step(folder: str | Path) -> int | None:
    """The step a checkpoint holds: its training state's (read safely, memory-mapped), else its folder name's."""
    path = Path(folder) / TRAINING_STATE
    if path.is_file():
        try:
            return int(load_tensor_file(path, mmap=True)["step"])
        except (CheckpointFileError, KeyError, TypeError, ValueError):
            pass
    return checkpoint_step(folder)


# ---------------------------------------------------------------------------------------------------------------
# where a run lives
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunPaths:
    """A run's folders: logs in `<root>/<run_id>/`, checkpoints `<root>/<run_id>--<step>_chkpt/` beside it."""

    root: Path
    run_id: str

    @property
    def run_dir(self) -> Path:
        return Path(self.root) / self.run_id

    def checkpoint(self, step: int) -> Path:
        return Path(self.root) / f"{self.run_id}--{step}_chkpt"

    def checkpoints(self) -> dict[int, Path]:
        """This run's complete checkpoint folders by step (exact names: `run--note--2_chkpt` is another run's)."""
        found = {}
        for path in Path(self.root).glob(f"{glob_escape(self.run_id)}--*_chkpt"):
            match = _CHECKPOINT_NAME.match(path.name)
            if match and match["run_id"] == self.run_id and path.is_dir():
                found[int(match["step"])] = path
        return dict(sorted(found.items()))

    def latest(self) -> Path | None:
        pointer = self.run_dir / LATEST_POINTER
        if not pointer.is_file():
            return None
        return Path(self.root) / pointer.read_text().strip()

    def set_latest(self, folder: Path) -> None:
        """Point `latest_checkpoint.txt` at `folder`, unless it already names a newer existing checkpoint."""
        current = self.latest()
        current_step = checkpoint_step(current) if current is not None and current.is_dir() else None
        new_step = checkpoint_step(folder)
        if current_step is not None and new_step is not None and current_step > new_step:
            return
        atomic_write_text(self.run_dir / LATEST_POINTER, folder.name + "\n")

    def clean_staging_leftovers(self) -> list[Path]:
        """Remove what crashed saves of this run left behind; a checkpoint caught mid-swap is put back."""
        leftover = re.compile(rf"^\.(?P<final>{re.escape(self.run_id)}--\d+_chkpt)\.(?:.+\.tmp|old-\d+)$")
        removed = []
        for path in sorted(Path(self.root).glob(f".{glob_escape(self.run_id)}--*_chkpt.*")):
            match = leftover.match(path.name)
            if not match:
                continue
            final = path.with_name(match["final"])
            if ".old-" in path.name and not final.exists():
                os.replace(path, final)  # the swap of `slim_optimizer_state` was interrupted: keep the original
                continue
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(path)
        return removed


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


# ---------------------------------------------------------------------------------------------------------------
# reading a checkpoint before anything is built
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class CheckpointInfo:
    """A verified checkpoint of this trainer, read without building a model."""

    folder: Path
    step: int
    run_id: str
    state: dict[str, Any]  # training_state.pt
    statistics: dict[str, Any]  # dataset_statistics.json

    @property
    def config_snapshot(self) -> Path:
        return self.folder / CONFIG_SNAPSHOT

    @property
    def world_size(self) -> int:
        return int(self.state["data"]["world_size"])


def verify_checkpoint(folder: str | Path) -> None:
    """Check a checkpoint of this trainer against its manifest (which it must have)."""
    folder = Path(folder)
    if not (folder / TRAINING_STATE).is_file():
        raise FileNotFoundError(
            f"{folder} has no {TRAINING_STATE}: not a checkpoint of this trainer (or an interrupted save); point "
            "--resum_vla_path at a `<run>--<step>_chkpt` folder"
        )
    if not verify_manifest(folder):
        raise CheckpointFileError(
            f"{folder} has no {MANIFEST}: it was not completely written by this trainer, so it cannot be trusted for "
            "a resume; use another checkpoint"
        )


def inspect_checkpoint(folder: str | Path) -> CheckpointInfo:
    """Read the training state and statistics of a checkpoint already checked with `verify_checkpoint`."""
    folder = Path(folder)
    state = load_tensor_file(folder / TRAINING_STATE, mmap=True)  # every process maps the same pages
    if not isinstance(state, dict) or state.get("format_version") != STATE_FORMAT_VERSION:
        version = state.get("format_version") if isinstance(state, dict) else None
        raise CheckpointFileError(
            f"{folder / TRAINING_STATE} has format {version}, this trainer reads format {STATE_FORMAT_VERSION}: "
            "resume it with the version that wrote it"
        )
    missing = [k for k in ("step", "run_id", "optimizer", "rng", "data", "counters") if k not in state]
    if missing:
        raise CheckpointFileError(f"{folder / TRAINING_STATE} lacks {missing}: not a complete training state")
    if state["optimizer"] is None:
        raise CheckpointFileError(
            f"{folder / TRAINING_STATE} holds no optimizer state (--keep_last_n_checkpoints keeps it in the newest "
            "checkpoint only): resume from the run's latest checkpoint"
        )
    for path in sorted(folder.glob("*.pt")):  # refuse a component that is not plain tensors now, not after the build
        if path.name != TRAINING_STATE:
            load_tensor_file(path, mmap=True)
    statistics_path = folder / DATASET_STATISTICS
    if not statistics_path.is_file():
        raise FileNotFoundError(f"{statistics_path} is missing: the checkpoint is incomplete; use another one")
    return CheckpointInfo(
        folder=folder,
        step=int(state["step"]),
        run_id=str(state["run_id"]),
        state=state,
        statistics=json.loads(statistics_path.read_text()),
    )


# ---------------------------------------------------------------------------------------------------------------
# the live state of a run
# ---------------------------------------------------------------------------------------------------------------
class TrainingState:
    """Saves and restores everything a run needs to continue exactly: weights of every trainable component,
    optimizer, schedule position, RNG of every rank, data position, lambda, counters and the configuration."""

    def __init__(
        self,
        paths: RunPaths,
        cfg: FinetuneConfig,
        ctx: DistContext,
        policy: VLAAdapterPolicy,
        spec: PolicySpec,
        optimizer: torch.optim.Optimizer,
        schedule: LRSchedule,
        craft_step: CRaFTStep | None,
        statistics: dict[str, Any],
    ) -> None:
        self.paths = paths
        self.cfg = cfg
        self.ctx = ctx
        self.policy = policy
        self.spec = spec
        self.optimizer = optimizer
        self.schedule = schedule
        self.craft_step = craft_step
        self.statistics = statistics
        self.counters = {"skipped_steps": 0, "consecutive_nonfinite": 0}

    # -- save ------------------------------------------------------------------------------------------------------
    def save(self, step: int) -> Path:
        """Write the checkpoint of `step` (a collective: every rank calls it; rank 0 writes)."""
        rngs = gather_objects(rng_state(), self.ctx)
        folder = self.paths.checkpoint(step)
        if self.ctx.is_main:
            check_saveable(self._trainable(), step)
            with staged_directory(folder) as tmp:
                self._write(tmp, step, rngs)
            self.paths.set_latest(folder)
            apply_retention(self.paths, self.cfg.checkpoints_to_keep())
        barrier(self.ctx)
        return folder

    def _trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.policy.parameters() if p.requires_grad]

    def _write(self, folder: Path, step: int, rngs: list[dict[str, Any]]) -> None:
        policy, is_lora = self.policy, isinstance(self.policy.vlm, PeftModel)
        write_policy_files(
            folder, policy, self.spec, self.cfg.config_file_path, self.statistics, step=step, merged=not is_lora
        )
        if is_lora and self.cfg.merge_lora_during_training:
            merged_dtype = MERGED_DTYPES[self.cfg.merged_dtype]
            save_vlm_weights(merged_state_dict(policy.vlm, merged_dtype), policy.base_vlm, folder / MERGED_WEIGHTS)
        torch.save({"weight": trained_action_queries(policy).detach().cpu().clone()}, folder / _queries_file(step))
        atomic_write_text(folder / CONFIG_SNAPSHOT, config_snapshot_text(self.cfg))
        cfg = self.cfg
        state = {
            "format_version": STATE_FORMAT_VERSION,
            "step": step,
            "run_id": self.paths.run_id,
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(step),
            "rng": rngs,
            "craft": self.craft_step.state_dict() if self.craft_step is not None else None,
            "counters": dict(self.counters),
            "data": {
                "samples_per_process": step * cfg.batch_size * cfg.grad_accumulation_steps,
                "world_size": self.ctx.world_size,
                "batch_size": cfg.batch_size,
                "grad_accumulation_steps": cfg.grad_accumulation_steps,
                "seed": cfg.seed,
                "data_sharding": cfg.data_sharding,
            },
        }
        torch.save(state, folder / TRAINING_STATE)
        write_manifest(folder)

    # -- restore ---------------------------------------------------------------------------------------------------
    def restore(self, info: CheckpointInfo) -> int:
        """Load a verified checkpoint into the live objects; returns its step. The current flags win where a resume
        was allowed to change them (learning rate, weight decay, CRaFT settings)."""
        folder, step, state = info.folder, info.step, info.state
        restore_trainable_weights(self.policy, folder, step)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointMismatchError(f"{folder / TRAINING_STATE}: optimizer state does not fit ({err})") from err
        for group in self.optimizer.param_groups:
            group["weight_decay"] = self.cfg.weight_decay
        self.schedule.apply(self.optimizer, step)
        if self.craft_step is not None and state.get("craft") is not None:
            self.craft_step.load_state_dict(state["craft"])
        self.counters.update(state["counters"])
        rngs = state["rng"]
        set_rng_state(rngs[self.ctx.rank] if self.ctx.rank < len(rngs) else rngs[0])
        return step


def check_saveable(parameters: list[torch.nn.Parameter], step: int) -> None:
    """Refuse to write weights that are non-finite or exploded (one reduction, one host sync)."""
    largest = torch.stack([p.detach().abs().max().float() for p in parameters]).max().item()
    if not (math.isfinite(largest) and largest <= EXPLODED_WEIGHT):
        raise NonFiniteTrainingError(
            f"refusing to save step {step}: the trainable weights are non-finite or exploded (max |w| = "
            f"{largest:.3g}); earlier checkpoints are intact. Lower --learning_rate or set --max_grad_norm"
        )


def _queries_file(step: int) -> str:
    return component_filename("action_queries", step)


def trained_action_queries(policy: VLAAdapterPolicy) -> torch.Tensor:
    queries = policy.base_vlm.action_queries
    return queries.modules_to_save["default"].weight if hasattr(queries, "modules_to_save") else queries.weight


def restore_trainable_weights(policy: VLAAdapterPolicy, folder: Path, step: int) -> None:
    """Load the trained weights of a checkpoint into a freshly built policy with the same structure."""
    folder = Path(folder)
    if isinstance(policy.vlm, PeftModel):
        adapter = folder / LORA_ADAPTER / ADAPTER_WEIGHTS
        if not adapter.is_file():
            raise FileNotFoundError(
                f"{adapter} is missing: this run uses LoRA, and the checkpoint has no LoRA weights (trained without "
                "LoRA, or the folder is incomplete)"
            )
        saved = load_safetensors_file(adapter)
        expected = get_peft_model_state_dict(policy.vlm)
        problems = [f"missing {k}" for k in expected if k not in saved]
        problems += [f"unexpected {k}" for k in saved if k not in expected]
        problems += [
            f"{k}: checkpoint {tuple(saved[k].shape)} vs model {tuple(v.shape)}"
            for k, v in expected.items()
            if k in saved and saved[k].shape != v.shape
        ]
        if problems:
            raise CheckpointMismatchError(
                f"{adapter} does not fit this model's LoRA layers ({len(problems)} problems, e.g. {problems[0]}): "
                "was it trained with another --lora_rank or base model?"
            )
        set_peft_model_state_dict(policy.vlm, saved)
    else:
        merged = folder / MERGED_WEIGHTS
        if not merged.is_file():
            raise FileNotFoundError(
                f"{merged} is missing: this run fine-tunes the full VLM and the checkpoint has no full weights "
                "(trained with LoRA, or the folder is incomplete)"
            )
        load_state_dict_strict(
            policy.vlm, load_safetensors_file(merged), str(merged), allow_missing=[re.escape(TIED_LM_HEAD)]
        )
    for component, module in (("action_head", policy.action_head), ("proprio_projector", policy.proprio_projector)):
        if module is None:
            continue
        path = folder / component_filename(component, step)
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the checkpoint is incomplete; use another one")
        load_state_dict_strict(module, load_component(path), str(path))
    check_action_queries(folder / _queries_file(step), trained_action_queries(policy))


# ---------------------------------------------------------------------------------------------------------------
# retention
# ---------------------------------------------------------------------------------------------------------------
def apply_retention(paths: RunPaths, keep: int | None) -> None:
    """Keep the newest `keep` checkpoints (all when None); of those, only the newest keeps its optimizer state.

    Called after a save completed. Crash leftovers of this run are removed too.
    """
    paths.clean_staging_leftovers()
    if keep is None:
        return
    checkpoints = list(paths.checkpoints().values())
    for folder in checkpoints[:-keep]:
        shutil.rmtree(folder, ignore_errors=True)
    for folder in checkpoints[-keep:-1]:
        slim_optimizer_state(folder)


def slim_optimizer_state(folder: Path) -> None:
    """Rewrite a finished checkpoint without its optimizer moments (weights untouched, hard-linked, not copied).

    The new folder is staged beside the old one and swapped in; a crash mid-swap is undone at the next start.
    """
    verify_manifest(folder, only=[TRAINING_STATE])
    state = load_tensor_file(folder / TRAINING_STATE)
    if state.get("optimizer") is None:
        return
    listed = read_manifest(folder) or {}
    with staged_directory(folder, overwrite=True) as tmp:
        for relative in listed:
            if relative == TRAINING_STATE:
                continue
            (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
            os.link(folder / relative, tmp / relative)
        torch.save({**state, "optimizer": None}, tmp / TRAINING_STATE)
        write_manifest(tmp)
