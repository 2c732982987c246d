"""Checkpoints in the guide's layout, written atomically on rank 0, and what resume reads back.

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
    └── training_state.pt                      optimizer, scheduler, step, RNG states of every rank, data position,
                                               CRaFT state, counters
The folder is assembled under a temporary name and renamed when complete, so a crash mid-save never damages the
previous checkpoint; `runs/<run_id>/latest_checkpoint.txt` names the newest one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from prismatic.models.loaders import PolicySpec
from prismatic.models.policy import VLAAdapterPolicy
from prismatic.models.savers import merged_state_dict, safetensors_ready, write_policy_files
from prismatic.models.state_dicts import TIED_LM_HEAD, load_state_dict_strict
from prismatic.util.atomic_io import atomic_write_text, staged_directory

TRAINING_STATE = "training_state.pt"
LATEST_POINTER = "latest_checkpoint.txt"
STATE_FORMAT_VERSION = 1


def checkpoint_path(run_root_dir: Path, run_id: str, step: int) -> Path:
    return Path(run_root_dir) / f"{run_id}--{step}_chkpt"


def save_checkpoint(
    folder: Path,
    policy: VLAAdapterPolicy,
    spec: PolicySpec,
    config_bundle_dir: Path,
    dataset_statistics: dict[str, Any],
    training_state: dict[str, Any],
    config_snapshot_text: str,
    step: int,
    merge_lora: bool = False,
) -> Path:
    """Write one complete checkpoint folder atomically (call on rank 0 only)."""
    with staged_directory(folder, overwrite=True) as tmp:
        is_lora = isinstance(policy.vlm, PeftModel)
        write_policy_files(tmp, policy, spec, config_bundle_dir, dataset_statistics, step=step, merged=not is_lora)
        if is_lora and merge_lora:
            save_file(safetensors_ready(merged_state_dict(policy.vlm), policy.base_vlm), str(tmp / "model.safetensors"))
        queries = policy.base_vlm.action_queries
        weight = queries.modules_to_save["default"].weight if hasattr(queries, "modules_to_save") else queries.weight
        torch.save({"weight": weight.detach().cpu().clone()}, tmp / f"action_queries--{step}_checkpoint.pt")
        atomic_write_text(tmp / "finetune_config.yaml", config_snapshot_text)
        torch.save({"format_version": STATE_FORMAT_VERSION, **training_state}, tmp / TRAINING_STATE)
    return folder


def update_latest_pointer(run_dir: Path, checkpoint: Path) -> None:
    atomic_write_text(run_dir / LATEST_POINTER, checkpoint.name + "\n")


def prune_checkpoints(run_root_dir: Path, run_id: str, keep: Path) -> None:
    """Delete this run's other checkpoint folders (with --save_latest_checkpoint_only), newest already saved."""
    for path in Path(run_root_dir).glob(f"{run_id}--*_chkpt"):
        if path.is_dir() and path.resolve() != keep.resolve():
            shutil.rmtree(path, ignore_errors=True)


def load_training_state(folder: Path) -> dict[str, Any]:
    path = Path(folder) / TRAINING_STATE
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise ValueError(f"cannot read {path}: {err} (corrupt or incomplete checkpoint; use an earlier one)") from err
    if state.get("format_version") != STATE_FORMAT_VERSION or "step" not in state:
        raise ValueError(f"{path} is not a training state of this trainer (format {state.get('format_version')})")
    return state


def restore_trainable_weights(policy: VLAAdapterPolicy, folder: Path, step: int) -> None:
    """Load the trained weights of a checkpoint into a freshly built policy with the same structure."""
    folder = Path(folder)
    if isinstance(policy.vlm, PeftModel):
        adapter = folder / "lora_adapter" / "adapter_model.safetensors"
        if not adapter.is_file():
            raise FileNotFoundError(f"{adapter} missing: the checkpoint was not trained with LoRA (--use_lora)")
        result = set_peft_model_state_dict(policy.vlm, load_file(str(adapter)))
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"{adapter} has weights this model does not: {unexpected[:5]}")
    else:
        merged = folder / "model.safetensors"
        if not merged.is_file():
            raise FileNotFoundError(f"{merged} missing: the checkpoint was trained with LoRA (use --use_lora True)")
        load_state_dict_strict(
            policy.vlm, load_file(str(merged)), str(merged), allow_missing=[TIED_LM_HEAD.replace(".", r"\.")]
        )
    for component, module in (("action_head", policy.action_head), ("proprio_projector", policy.proprio_projector)):
        if module is None:
            continue
        path = folder / f"{component}--{step}_checkpoint.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{path} missing from the checkpoint")
        state = torch.load(path, map_location="cpu", weights_only=True)
        load_state_dict_strict(module, {k.removeprefix("module."): v for k, v in state.items()}, str(path))


def infer_checkpoint_step(folder: Path) -> int | None:
    """The step a checkpoint folder holds, from its training state or its name (`...--<step>_chkpt`)."""
    path = Path(folder) / TRAINING_STATE
    if path.is_file():
        try:
            return int(torch.load(path, map_location="cpu", weights_only=False)["step"])
        except Exception:
            return None
    name = os.path.basename(os.path.normpath(folder))
    if "--" in name and name.endswith("_chkpt"):
        tail = name.rsplit("--", 1)[1].removesuffix("_chkpt")
        return int(tail) if tail.isdigit() else None
    return None
