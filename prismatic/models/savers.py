"""Writers of the on-disk formats read by `loaders.py`, always atomically (temp folder, then rename)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml
from peft import PeftModel
from safetensors.torch import save_file

from prismatic.models.loaders import BASE_VLM_ABSOLUTE, PolicySpec
from prismatic.models.policy import VLAAdapterPolicy
from prismatic.models.precision import cast_floating
from prismatic.models.presets import openvla_config
from prismatic.models.state_dicts import TIED_LM_HEAD, hf_to_native
from prismatic.models.tokenizer import BUNDLE_FILES
from prismatic.models.vlm import PrismaticVLM
from prismatic.util.atomic_io import atomic_write_json, atomic_write_text, staged_directory
from prismatic.util.checkpoint_io import write_manifest

# Files of a config bundle that a policy folder carries along (everything but the model config itself).
TOKENIZER_AND_PROCESSOR_FILES = tuple(name for name in BUNDLE_FILES if name != "config.json")


def save_vlm_weights(
    state: dict[str, torch.Tensor], vlm: PrismaticVLM, path: Path, dtype: torch.dtype | None = None
) -> None:
    """`model.safetensors` as transformers writes it: contiguous CPU tensors, no LM head tied to the embeddings
    (safetensors forbids aliases), and `{"format": "pt"}` metadata, without which transformers' `from_pretrained`
    (VLA-Adapter's loader) refuses the file. `dtype` casts every floating-point tensor (None: as stored)."""
    if vlm.preset.llm.tie_word_embeddings:
        state = {k: v for k, v in state.items() if k != TIED_LM_HEAD}
    if dtype is not None:
        state = cast_floating(state, dtype)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path), metadata={"format": "pt"})


def portable_spec(spec: PolicySpec, folder: Path) -> dict[str, Any]:
    """The spec as stored in `config.json`: the base VLM both relative to the checkpoint folder (a run moved together
    with its VLM still loads) and absolute (a checkpoint moved alone still loads); `folder` is the checkpoint's
    staging folder, which sits next to the final one, so the relative path is the same."""
    section = spec.to_dict()
    if spec.base_vlm_path:
        base = Path(spec.base_vlm_path).resolve()
        section["base_vlm_path"] = os.path.relpath(base, Path(folder).resolve())
        section[BASE_VLM_ABSOLUTE] = str(base)
    return section


def component_filename(component: str, step: int | None) -> str:
    return f"{component}--{step}_checkpoint.pt" if step is not None else f"{component}--checkpoint.pt"


def write_policy_files(
    folder: Path,
    policy: VLAAdapterPolicy,
    spec: PolicySpec,
    config_bundle_dir: str | Path,
    dataset_statistics: dict[str, Any],
    step: int | None = None,
    merged: bool = True,
    weights_dtype: torch.dtype | None = None,
) -> None:
    """Write a policy into an existing (temporary) `folder`.

    `merged=True` writes the full VLM as `model.safetensors` (LoRA folded in, on a copy: the live model keeps its
    adapters) in `weights_dtype` (None: as stored, e.g. a full fine-tune's fp32 masters); `merged=False` writes only
    `lora_adapter/` (peft format) and relies on `spec.base_vlm_path`.
    """
    bundle = Path(config_bundle_dir)
    config = json.loads((bundle / "config.json").read_text()) if (bundle / "config.json").is_file() else {}
    config.update(openvla_config(policy.base_vlm.preset))
    config["norm_stats"] = dataset_statistics  # where transformers-style loaders look for them
    config["vla_adapter"] = portable_spec(spec, folder)
    atomic_write_json(folder / "config.json", config)
    for name in TOKENIZER_AND_PROCESSOR_FILES:
        if (bundle / name).is_file():
            shutil.copyfile(bundle / name, folder / name)
    vlm = policy.vlm
    if isinstance(vlm, PeftModel):
        if merged:
            save_vlm_weights(merged_state_dict(vlm, weights_dtype), policy.base_vlm, folder / "model.safetensors")
        else:
            if spec.base_vlm_path:  # peft's own loaders read the base from adapter_config.json
                for adapter_config in vlm.peft_config.values():
                    adapter_config.base_model_name_or_path = str(Path(spec.base_vlm_path).resolve())
            vlm.save_pretrained(str(folder / "lora_adapter"))
    else:
        save_vlm_weights(vlm.state_dict(), vlm, folder / "model.safetensors", weights_dtype)
    torch.save(policy.action_head.state_dict(), folder / component_filename("action_head", step))
    if policy.proprio_projector is not None:
        torch.save(policy.proprio_projector.state_dict(), folder / component_filename("proprio_projector", step))
    atomic_write_json(folder / "dataset_statistics.json", dataset_statistics)


def merged_state_dict(vlm: PeftModel, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """HF-named weights of a LoRA-wrapped VLM with the adapters folded in, without touching the live model.

    Only the adapted weights are materialised anew (W + scale * B @ A, summed in fp32 and rounded once to `dtype`,
    by default the base weight's); everything else is shared (or cast to `dtype`), so this costs far less than
    copying or re-loading the base model.
    """
    base = vlm.get_base_model()
    modules = dict(base.named_modules())
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for key, value in base.state_dict().items():
            if ".lora_" in key or ".original_module." in key:
                continue
            if ".modules_to_save." in key:
                owner, rest = key.split(".modules_to_save.", 1)
                out[f"{owner}.{rest.split('.', 1)[1]}"] = value
            elif ".base_layer." in key:
                owner, param = key.rsplit(".base_layer.", 1)
                layer = modules[owner]
                if param == "weight":
                    delta = sum(layer.get_delta_weight(a) for a in layer.active_adapters if a in layer.lora_A)
                    value = (value.float() + delta.float()).to(dtype or value.dtype)
                out[f"{owner}.{param}"] = value
            else:
                out[key] = value
    return cast_floating(out, dtype) if dtype is not None else out


def save_policy(
    folder: str | Path,
    policy: VLAAdapterPolicy,
    spec: PolicySpec,
    config_bundle_dir: str | Path,
    dataset_statistics: dict[str, Any],
    step: int | None = None,
    merged: bool = True,
    overwrite: bool = False,
    weights_dtype: torch.dtype | None = None,
) -> Path:
    """Write a loadable policy folder atomically, with its manifest (see `write_policy_files`)."""
    with staged_directory(folder, overwrite=overwrite) as tmp:
        write_policy_files(tmp, policy, spec, config_bundle_dir, dataset_statistics, step, merged, weights_dtype)
        write_manifest(tmp)
    return Path(folder)


def write_prismatic_vlm_folder(
    folder: str | Path, vlm: PrismaticVLM, step: int = 0, seed: int = 7, overwrite: bool = False
) -> Path:
    """A VLM in the native Prismatic layout: `config.json` / `config.yaml` (`model` section) + `checkpoints/`."""
    preset = vlm.preset
    model_section = {
        "type": preset.model_id,
        "model_id": preset.model_id,
        "arch_specifier": preset.arch_specifier,
        "vision_backbone_id": preset.vision_backbone_id,
        "llm_backbone_id": preset.llm_backbone_id,
        "image_resize_strategy": preset.image_resize_strategy,
        "llm_max_length": preset.llm_max_length,
    }
    config = {"model": model_section, "stage": "finetune", "run_id": preset.model_id, "seed": seed}
    state = {k: v.detach().cpu().clone() for k, v in vlm.state_dict().items() if k != "action_queries.weight"}
    native = hf_to_native(state)
    with staged_directory(folder, overwrite=overwrite) as tmp:
        atomic_write_json(tmp / "config.json", config)
        atomic_write_text(tmp / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        (tmp / "checkpoints").mkdir()
        name = f"step-{step:06d}-epoch-00-loss=0.0000.pt"
        torch.save({"model": native}, tmp / "checkpoints" / name)
    return Path(folder)
