"""Loaders for the three on-disk formats users have, all offline and strict.

(a) a pretrained Prismatic VLM folder (`--vlm_path`): `config.json` with a `model` section + `checkpoints/*.pt`;
(b) a released VLA-Adapter fine-tuned folder: merged `model.safetensors` (HF names), `action_head--*checkpoint.pt`,
    `proprio_projector--*checkpoint.pt` (DDP `module.` prefix), `dataset_statistics.json`, tokenizer files;
(c) this project's checkpoints: the same layout plus a `vla_adapter` section in `config.json`, and either a merged
    `model.safetensors` or a `lora_adapter/` applied on the base VLM recorded there.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed

from prismatic.models.lora import load_lora
from prismatic.models.policy import VLAAdapterPolicy
from prismatic.models.presets import VLMPreset, preset_for_backbones, preset_from_openvla_config
from prismatic.models.state_dicts import TIED_LM_HEAD, load_state_dict_strict, native_to_hf, strip_prefix
from prismatic.models.vlm import PrismaticVLM
from prismatic.util.checkpoint_io import CheckpointFileError, load_safetensors_file, load_tensor_file, verify_manifest
from prismatic.vla.constants import LIBERO_CONSTANTS, NormalizationType, RobotConstants

VISION_WEIGHTS_HELP = (
    "Put the timm weights of both ViTs in {folder} as `{dino}.safetensors` and `{siglip}.safetensors` (the "
    "`model.safetensors` files of the Hugging Face repos `timm/{dino}` and `timm/{siglip}`, downloaded on a machine "
    "with network access), or pass --vision_weights_dir pointing at a folder holding them."
)


# ---------------------------------------------------------------------------------------------------------------
# (a) pretrained Prismatic VLM folder
# ---------------------------------------------------------------------------------------------------------------
def newest_checkpoint(checkpoints_dir: Path) -> Path:
    """The checkpoint with the highest `step-N` in its name (else `latest-checkpoint.pt`)."""
    if not checkpoints_dir.is_dir():
        raise FileNotFoundError(f"{checkpoints_dir} does not exist: a Prismatic VLM folder has checkpoints/*.pt")
    stepped = []
    for path in checkpoints_dir.glob("*.pt"):
        match = re.match(r"step-(\d+)", path.name)
        if match:
            stepped.append((int(match.group(1)), path.name, path))
    if stepped:
        return max(stepped)[2]
    latest = checkpoints_dir / "latest-checkpoint.pt"
    if latest.is_file():
        return latest
    raise FileNotFoundError(f"no step-*.pt or latest-checkpoint.pt in {checkpoints_dir}")


def read_prismatic_config(vlm_path: Path) -> dict[str, Any]:
    config_path = vlm_path / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} not found: --vlm_path must be a Prismatic VLM folder "
            "(e.g. pretrained_models/prism-qwen25-extra-dinosiglip-224px-0_5b with config.json and checkpoints/)"
        )
    config = json.loads(config_path.read_text())
    if "model" not in config:
        raise ValueError(f"{config_path} has no `model` section; is this a Prismatic VLM folder?")
    return config["model"]


def fit_position_table(state: dict[str, torch.Tensor], featurizer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Resample a timm ViT file's `pos_embed` to the model's patch grid, as timm's pretrained loader does (bicubic,
    antialiased): DINOv2's timm weights are stored at 518 px (37 x 37 positions), the VLM runs at 224 px (16 x 16)."""
    table, target = state.get("pos_embed"), getattr(featurizer, "pos_embed", None)
    if table is None or target is None or table.shape == target.shape:
        return state
    prefix_tokens = 0 if getattr(featurizer, "no_embed_class", False) else getattr(featurizer, "num_prefix_tokens", 1)
    resized = resample_abs_pos_embed(table, new_size=featurizer.patch_embed.grid_size, num_prefix_tokens=prefix_tokens)
    return {**state, "pos_embed": resized}


def _vision_weights_from_files(vlm: PrismaticVLM, folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    specs = {"featurizer": vlm.preset.dino, "fused_featurizer": vlm.preset.siglip}
    for attr, spec in specs.items():
        path = folder / f"{spec.timm_id}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(str(path))
        featurizer = getattr(vlm.vision_backbone, attr)
        for key, value in fit_position_table(load_safetensors_file(path), featurizer).items():
            out[f"vision_backbone.{attr}.{re.sub(r'.gamma$', '.scale_factor', key)}"] = value
    return out


def load_prismatic_vlm(
    vlm_path: str | Path, num_images: int = 1, vision_weights_dir: str | Path | None = None
) -> PrismaticVLM:
    """Build the VLM described by a Prismatic folder and load its newest checkpoint (native key names)."""
    vlm_path = Path(vlm_path)
    model_cfg = read_prismatic_config(vlm_path)
    preset = preset_for_backbones(model_cfg["vision_backbone_id"], model_cfg["llm_backbone_id"])
    checkpoint = newest_checkpoint(vlm_path / "checkpoints")
    payload = load_tensor_file(checkpoint)
    if (
        not isinstance(payload, dict)
        or "model" not in payload
        or not {"projector", "llm_backbone"} <= set(payload["model"])
    ):
        raise ValueError(f"{checkpoint} lacks model.projector / model.llm_backbone: not a Prismatic checkpoint")
    state = native_to_hf(payload["model"])
    vlm = PrismaticVLM(preset, num_images=num_images)
    if "vision_backbone" not in payload["model"]:
        folder = Path(vision_weights_dir) if vision_weights_dir is not None else vlm_path / "vision_backbone"
        try:
            state.update(_vision_weights_from_files(vlm, folder))
        except FileNotFoundError as err:
            help_text = VISION_WEIGHTS_HELP.format(
                folder=folder, dino=preset.dino.timm_id, siglip=preset.siglip.timm_id
            )
            raise FileNotFoundError(
                f"{checkpoint} has no vision_backbone weights and {err} does not exist. {help_text}"
            ) from err
    load_state_dict_strict(
        vlm, state, f"{checkpoint}", allow_missing=[r"action_queries\.weight", re.escape(TIED_LM_HEAD)]
    )
    return vlm


# ---------------------------------------------------------------------------------------------------------------
# (b) / (c) fine-tuned policy folders
# ---------------------------------------------------------------------------------------------------------------
BASE_VLM_ABSOLUTE = "base_vlm_path_absolute"  # config.json: the base VLM's absolute path beside the relative one


@dataclass
class PolicySpec:
    """How a policy was built; stored as the `vla_adapter` section of this project's checkpoint `config.json`."""

    num_images_in_input: int = 2
    use_proprio: bool = True
    use_pro_version: bool = True
    action_chunk: int = LIBERO_CONSTANTS.action_chunk
    action_dim: int = LIBERO_CONSTANTS.action_dim
    proprio_dim: int = LIBERO_CONSTANTS.proprio_dim
    normalization: str = LIBERO_CONSTANTS.normalization.value
    dataset_name: str | None = None
    base_vlm_path: str | None = None
    lora: dict[str, Any] | None = None  # {"rank": r, "dropout": p} when trained with LoRA
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def robot(self) -> RobotConstants:
        return RobotConstants(
            self.action_chunk, self.action_dim, self.proprio_dim, NormalizationType(self.normalization)
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoadedPolicy:
    policy: VLAAdapterPolicy
    spec: PolicySpec
    dataset_statistics: dict[str, Any]
    folder: Path


def component_step(path: Path) -> int | None:
    """The step in a component file's name (`action_head--150000_checkpoint.pt`), None for `--checkpoint.pt`."""
    match = re.search(r"--(\d+)_checkpoint\.pt$", path.name)
    return int(match.group(1)) if match else None


def find_component(folder: Path, component: str) -> Path | None:
    """`{component}--{step}_checkpoint.pt` or `{component}--checkpoint.pt`; the highest step if several."""
    candidates = sorted(folder.glob(f"{component}--*checkpoint.pt"))
    if not candidates:
        return None
    return max(candidates, key=lambda path: -1 if component_step(path) is None else component_step(path))


def load_component(path: Path) -> dict[str, torch.Tensor]:
    """A component state dict (action head, proprio projector, ...), read safely, DDP's `module.` prefix dropped."""
    state = load_tensor_file(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointFileError(f"{path} is not a state dict of tensors")
    return strip_prefix(state)


def check_action_queries(path: Path, queries: torch.Tensor) -> torch.Tensor:
    """A checkpoint's `action_queries--*_checkpoint.pt` (the fp32 master) must equal the queries inside its VLM
    weights, exactly or once rounded to bf16 (merged weights are written in bf16 by default); returns the master."""
    saved = load_component(path).get("weight")
    held = queries.detach().cpu()
    same = saved is not None and saved.shape == held.shape
    if same and (torch.equal(saved, held) or torch.equal(saved.to(torch.bfloat16).to(held.dtype), held)):
        return saved
    raise CheckpointFileError(
        f"{path} disagrees with the action queries in the checkpoint's VLM weights: the folder mixes files of "
        "different checkpoints; use another one"
    )


def read_dataset_statistics(folder: Path) -> dict[str, Any]:
    path = folder / "dataset_statistics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a fine-tuned policy folder needs its dataset statistics")
    return json.loads(path.read_text())


def resolve_base_vlm(folder: Path, recorded: str | None, absolute: str | None, override: str | Path | None) -> str:
    """The base VLM of a checkpoint: `--base_vlm_path` when given, else the recorded path relative to the checkpoint
    (a run moved together with its VLM), else the absolute path it was trained from (a checkpoint moved alone)."""
    if override is not None:
        if not (Path(override) / "config.json").is_file():
            raise FileNotFoundError(f"--base_vlm_path {override} is not a Prismatic VLM folder (no config.json)")
        return str(Path(override).resolve())
    candidates = [folder / recorded if recorded and not Path(recorded).is_absolute() else Path(recorded or "")]
    if absolute:
        candidates.append(Path(absolute))
    for candidate in candidates:
        if str(candidate) not in ("", ".") and (candidate / "config.json").is_file():
            return str(candidate.resolve())
    tried = ", ".join(str(c) for c in candidates if str(c) not in ("", "."))
    raise FileNotFoundError(
        f"{folder} needs its base VLM, which is not at {tried or 'a recorded path'}: pass --base_vlm_path "
        f"<the Prismatic VLM folder it was fine-tuned from, or the policy folder a warm-started run began from>"
    )


@dataclass
class PolicyFolder:
    """A fine-tuned policy folder read without building a model: its config, how it was built, and its files."""

    folder: Path
    config: dict[str, Any]
    spec: PolicySpec
    head_path: Path
    proprio_path: Path | None

    @property
    def weights_kind(self) -> str:
        return "merged weights" if (self.folder / "model.safetensors").is_file() else "LoRA adapter on its base VLM"


def inspect_policy_folder(
    folder: str | Path, num_images_in_input: int | None = None, base_vlm_path: str | Path | None = None
) -> PolicyFolder:
    """Read and check a released VLA-Adapter folder (b) or one of this project's checkpoints (c): its manifest, its
    structure (head kind, proprio, action size, read from the files themselves) and where its base VLM is."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: not a VLA-Adapter / project checkpoint folder")
    verify_manifest(folder)
    config = json.loads(config_path.read_text())
    section = dict(config.get("vla_adapter", {}))
    absolute = section.pop(BASE_VLM_ABSOLUTE, None)
    spec = PolicySpec(**section)
    needs_base = (folder / "lora_adapter").is_dir() and not (folder / "model.safetensors").is_file()
    if needs_base or base_vlm_path is not None:
        spec.base_vlm_path = resolve_base_vlm(folder, spec.base_vlm_path, absolute, base_vlm_path)
    elif spec.base_vlm_path:
        try:
            spec.base_vlm_path = resolve_base_vlm(folder, spec.base_vlm_path, absolute, None)
        except FileNotFoundError:
            spec.base_vlm_path = None  # merged weights stand alone; theta_0 consumers ask for --base_vlm_path
    if num_images_in_input is not None:
        spec.num_images_in_input = num_images_in_input
    head_path = find_component(folder, "action_head")
    if head_path is None:
        raise FileNotFoundError(f"no action_head--*checkpoint.pt in {folder}")
    head_state = load_component(head_path)
    spec.use_pro_version = any(".k_self." in k for k in head_state)
    spec.action_dim = int(head_state["model.fc2.weight"].shape[0])
    proprio_path = find_component(folder, "proprio_projector")
    spec.use_proprio = proprio_path is not None
    if not needs_base and not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder} has neither model.safetensors nor lora_adapter/: no VLM weights to load")
    return PolicyFolder(folder, config, spec, head_path, proprio_path)


def load_policy(
    folder: str | Path, num_images_in_input: int | None = None, base_vlm_path: str | Path | None = None
) -> LoadedPolicy:
    """Load a released VLA-Adapter folder (b) or one of this project's checkpoints (c), verified by its manifest.

    `base_vlm_path` overrides where the base VLM of a LoRA checkpoint is looked for (see `resolve_base_vlm`).
    """
    return load_inspected_policy(inspect_policy_folder(folder, num_images_in_input, base_vlm_path))


def load_inspected_policy(found: PolicyFolder) -> LoadedPolicy:
    """Build and load the policy of a folder already read by `inspect_policy_folder` (checks done before loading)."""
    spec = found.spec
    vlm = _load_vlm_for_policy(found)
    queries_path = find_component(found.folder, "action_queries")
    if queries_path is not None:  # this project's checkpoints: the trained queries also stand alone
        master = check_action_queries(queries_path, vlm.action_queries.weight)
        with torch.no_grad():  # the fp32 master, rather than the bf16 copy inside merged weights
            vlm.action_queries.weight.copy_(master)
    policy = VLAAdapterPolicy(vlm, spec.robot, use_pro_version=spec.use_pro_version, use_proprio=spec.use_proprio)
    load_state_dict_strict(policy.action_head, load_component(found.head_path), str(found.head_path))
    if found.proprio_path is not None:
        assert policy.proprio_projector is not None
        load_state_dict_strict(policy.proprio_projector, load_component(found.proprio_path), str(found.proprio_path))
    return LoadedPolicy(policy.eval(), spec, read_dataset_statistics(found.folder), found.folder)


def _load_vlm_for_policy(found: PolicyFolder, depth: int = 0) -> PrismaticVLM:
    merged = found.folder / "model.safetensors"
    if merged.is_file():
        vlm = PrismaticVLM(preset_from_openvla_config(found.config), num_images=found.spec.num_images_in_input)
        load_state_dict_strict(vlm, load_safetensors_file(merged), str(merged), allow_missing=[re.escape(TIED_LM_HEAD)])
        return vlm
    if not found.spec.base_vlm_path:
        raise ValueError(f"{found.folder} has a lora_adapter/ but config.json records no base_vlm_path")
    base = load_base_vlm(found.spec.base_vlm_path, found.spec.num_images_in_input, depth + 1)
    return load_lora(base, found.folder / "lora_adapter").merge_and_unload()


def load_base_vlm(path: str | Path, num_images: int = 1, depth: int = 0) -> PrismaticVLM:
    """The VLM a checkpoint's LoRA adapter (and CRaFT's theta_0) refers to: a Prismatic VLM folder, or the policy
    folder a warm-started run began from (its merged weights, or its own adapter on its own base)."""
    path = Path(path)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: a base VLM is a Prismatic VLM folder or a policy folder")
    if "model" in json.loads(config_path.read_text()):
        return load_prismatic_vlm(path, num_images=num_images)
    if depth > 8:
        raise ValueError(f"{path}: the chain of warm-start base VLMs is deeper than 8 folders (a cycle?)")
    return _load_vlm_for_policy(inspect_policy_folder(path, num_images_in_input=num_images), depth)


def build_policy(preset: VLMPreset, spec: PolicySpec) -> VLAAdapterPolicy:
    """A freshly initialised policy (random VLM) with `spec`'s structure; used by tests and asset writers."""
    vlm = PrismaticVLM(preset, num_images=spec.num_images_in_input)
    return VLAAdapterPolicy(vlm, spec.robot, use_pro_version=spec.use_pro_version, use_proprio=spec.use_proprio)
