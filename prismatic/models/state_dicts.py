"""Key-name conversions between checkpoint formats, and strict loading with a readable report.

Formats:
* native Prismatic (`checkpoints/step-*.pt`, `torch.load(f)["model"]`): sub-dicts `projector` (`projector.{0,2,4}`),
  `llm_backbone` (`llm.*`) and optionally `vision_backbone` (`dino_featurizer.*`, `siglip_featurizer.*`, timm's
  LayerScale as `gamma`);
* HF / VLA-Adapter (`model.safetensors`) and this project: `vision_backbone.featurizer.*`,
  `vision_backbone.fused_featurizer.*` (LayerScale as `scale_factor`), `projector.fc{1,2,3}.*`, `language_model.*`,
  `action_queries.weight`; action head / proprio projector files may carry DDP's `module.` prefix.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping

import torch
from torch import nn

NATIVE_PROJECTOR = {
    "projector.0.": "projector.fc1.",
    "projector.2.": "projector.fc2.",
    "projector.4.": "projector.fc3.",
}
NATIVE_VISION = {
    "dino_featurizer.": "vision_backbone.featurizer.",
    "siglip_featurizer.": "vision_backbone.fused_featurizer.",
}
TIED_LM_HEAD = "language_model.lm_head.weight"


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model it is loaded into; the message lists what differs."""


def _rename_prefix(key: str, mapping: Mapping[str, str]) -> str:
    for old, new in mapping.items():
        if key.startswith(old):
            return new + key[len(old) :]
    raise KeyError(key)


def native_to_hf(model_dicts: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """`torch.load(step.pt)["model"]` of a native Prismatic checkpoint -> one flat dict in HF names."""
    out: dict[str, torch.Tensor] = {}
    for key, value in model_dicts.get("projector", {}).items():
        out[_rename_prefix(key, NATIVE_PROJECTOR)] = value
    for key, value in model_dicts.get("llm_backbone", {}).items():
        if not key.startswith("llm."):
            raise KeyError(f"unexpected llm_backbone key {key!r} (expected 'llm.*')")
        out["language_model." + key[len("llm.") :]] = value
    for key, value in model_dicts.get("vision_backbone", {}).items():
        hf_key = _rename_prefix(key, NATIVE_VISION)
        out[re.sub(r"\.gamma$", ".scale_factor", hf_key)] = value
    return out


def hf_to_native(state: Mapping[str, torch.Tensor], include_vision: bool = True) -> dict[str, dict[str, torch.Tensor]]:
    """Inverse of `native_to_hf` (action queries have no native counterpart and are dropped)."""
    inverse_projector = {v: k for k, v in NATIVE_PROJECTOR.items()}
    inverse_vision = {v: k for k, v in NATIVE_VISION.items()}
    out: dict[str, dict[str, torch.Tensor]] = {"projector": {}, "llm_backbone": {}}
    if include_vision:
        out["vision_backbone"] = {}
    for key, value in state.items():
        if key.startswith("projector."):
            out["projector"][_rename_prefix(key, inverse_projector)] = value
        elif key.startswith("language_model."):
            out["llm_backbone"]["llm." + key[len("language_model.") :]] = value
        elif key.startswith("vision_backbone.") and include_vision:
            native = _rename_prefix(key, inverse_vision)
            out["vision_backbone"][re.sub(r"\.scale_factor$", ".gamma", native)] = value
    return out


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Drop DDP's `module.` prefix where present."""
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}


def _group(keys: Iterable[str], limit: int = 16) -> str:
    groups: dict[str, list[str]] = defaultdict(list)
    for key in sorted(keys):
        groups[re.sub(r"\.\d+\.", ".*.", key)].append(key)
    lines = [
        f"    {pattern}" + (f"  ({len(members)} keys)" if len(members) > 1 else "")
        for pattern, members in list(groups.items())[:limit]
    ]
    if len(groups) > limit:
        lines.append(f"    ... and {len(groups) - limit} more patterns")
    return "\n".join(lines)


def load_state_dict_strict(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    allow_missing: Iterable[str] = (),
    allow_unexpected: Iterable[str] = (),
) -> None:
    """Load `state` into `module`, failing with a grouped report of missing, unexpected and mis-shaped keys.

    `allow_missing` / `allow_unexpected` are regular expressions of keys that may legitimately differ (e.g. the tied
    LM head, or action queries absent from a base VLM).
    """
    expected = module.state_dict()
    allow_m = [re.compile(p) for p in allow_missing]
    allow_u = [re.compile(p) for p in allow_unexpected]
    missing = [k for k in expected if k not in state and not any(p.fullmatch(k) for p in allow_m)]
    unexpected = [k for k in state if k not in expected and not any(p.fullmatch(k) for p in allow_u)]
    shapes = [
        f"    {k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in state
        if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = [f"{source} does not match the model:"]
        if missing:
            parts.append(f"  missing {len(missing)} key(s):\n{_group(missing)}")
        if unexpected:
            parts.append(f"  unexpected {len(unexpected)} key(s):\n{_group(unexpected)}")
        if shapes:
            parts.append(f"  {len(shapes)} shape mismatch(es):\n" + "\n".join(shapes[:8]))
        parts.append("  (is it the right file for this architecture / --num_images_in_input / --use_pro_version?)")
        raise CheckpointMismatchError("\n".join(parts))
    module.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
