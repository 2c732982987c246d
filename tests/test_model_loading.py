"""Loaders of the three on-disk formats: Prismatic VLM folders, released VLA-Adapter folders, our checkpoints."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.released import write_released_folder
from safetensors.torch import save_file

from prismatic.models.batch import PolicyBatch, policy_batch
from prismatic.models.loaders import PolicySpec, load_policy, load_prismatic_vlm, newest_checkpoint
from prismatic.models.lora import LoRASettings, apply_lora
from prismatic.models.policy import VLAAdapterPolicy
from prismatic.models.presets import TINY
from prismatic.models.savers import merged_state_dict, save_policy
from prismatic.models.state_dicts import CheckpointMismatchError, hf_to_native, load_state_dict_strict, native_to_hf
from prismatic.models.tokenizer import load_tokenizer
from prismatic.models.vlm import PrismaticVLM
from prismatic.vla.constants import ACTION_QUERY_TOKEN_ID, LIBERO_CONSTANTS

STATS = {
    "libero_spatial_no_noops": {
        "action": {"q01": [-0.5] * 6 + [0.0], "q99": [0.5] * 6 + [1.0], "mask": [True] * 6 + [False]},
        "proprio": {"q01": [-1.0] * 8, "q99": [1.0] * 8},
        "num_transitions": 10,
        "num_trajectories": 1,
    }
}


def batch(batch_size: int = 2, seed: int = 0) -> PolicyBatch:
    generator = torch.Generator().manual_seed(seed)
    return policy_batch(
        [[11, 12, 13, 14] + [ACTION_QUERY_TOKEN_ID] * 64] * batch_size,
        0,
        torch.randn(batch_size, 12, 224, 224, generator=generator),
        proprio=torch.randn(batch_size, 8, generator=generator),
    )


def actions(policy: VLAAdapterPolicy, seed: int = 0) -> torch.Tensor:
    policy.eval()
    with torch.no_grad():
        return policy(batch(seed=seed)).actions


def test_prismatic_folder_round_trip(tiny_assets: tuple[Path, Path]) -> None:
    vlm_dir, _ = tiny_assets
    vlm = load_prismatic_vlm(vlm_dir, num_images=2)
    payload = torch.load(newest_checkpoint(vlm_dir / "checkpoints"), weights_only=True)
    assert set(payload["model"]) == {"projector", "llm_backbone", "vision_backbone"}
    assert any(k.endswith("ls1.gamma") for k in payload["model"]["vision_backbone"])  # native timm names
    assert "projector.0.weight" in payload["model"]["projector"]
    expected = native_to_hf(payload["model"])
    state = vlm.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value)
    assert torch.count_nonzero(state["action_queries.weight"]) == 0  # zero-initialised, not in the VLM file
    config = json.loads((vlm_dir / "config.json").read_text())
    assert config["model"]["llm_backbone_id"] == TINY.llm_backbone_id and (vlm_dir / "config.yaml").is_file()


def test_native_and_hf_names_convert_both_ways() -> None:
    torch.manual_seed(0)
    state = {k: v for k, v in PrismaticVLM(TINY).state_dict().items() if k != "action_queries.weight"}
    assert native_to_hf(hf_to_native(state)).keys() == state.keys()


def test_newest_checkpoint_is_picked(tmp_path: Path) -> None:
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    for name in ("step-000100-epoch-00-loss=1.0.pt", "step-020792-epoch-01-loss=0.5268.pt", "latest-checkpoint.pt"):
        (ckpts / name).write_bytes(b"")
    assert newest_checkpoint(ckpts).name == "step-020792-epoch-01-loss=0.5268.pt"
    with pytest.raises(FileNotFoundError, match="checkpoints"):
        newest_checkpoint(tmp_path / "missing")


def _without_vision_weights(tmp_path: Path, vlm_dir: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A copy of a Prismatic folder whose checkpoint lacks vision weights (the Prismatic trainer's default)."""
    stripped = tmp_path / "vlm"
    shutil.copytree(vlm_dir, stripped)
    ckpt = newest_checkpoint(stripped / "checkpoints")
    payload = torch.load(ckpt, weights_only=True)
    vision = payload["model"].pop("vision_backbone")
    torch.save(payload, ckpt)
    return stripped, vision


def _write_timm_files(folder: Path, vision: dict[str, torch.Tensor]) -> None:
    """The vision weights the way the error message asks for them: timm-named safetensors files."""
    folder.mkdir()
    for prefix, spec in (("dino_featurizer.", TINY.dino), ("siglip_featurizer.", TINY.siglip)):
        part = {k[len(prefix) :]: v.contiguous() for k, v in vision.items() if k.startswith(prefix)}
        save_file(part, str(folder / f"{spec.timm_id}.safetensors"))


def test_missing_vision_weights_are_a_clear_error_and_files_fix_it(
    tmp_path: Path, tiny_assets: tuple[Path, Path]
) -> None:
    vlm_dir, vision = _without_vision_weights(tmp_path, tiny_assets[0])
    with pytest.raises(FileNotFoundError) as err:
        load_prismatic_vlm(vlm_dir)
    message = str(err.value)
    assert "no vision_backbone weights" in message and f"{TINY.dino.timm_id}.safetensors" in message
    assert "--vision_weights_dir" in message
    _write_timm_files(tmp_path / "timm", vision)
    vlm = load_prismatic_vlm(vlm_dir, vision_weights_dir=tmp_path / "timm")
    reference = load_prismatic_vlm(tiny_assets[0])
    torch.testing.assert_close(vlm.state_dict(), reference.state_dict())


def test_a_518_px_dinov2_position_table_is_resampled_like_timm(tmp_path: Path, tiny_assets: tuple[Path, Path]) -> None:
    """timm's DINOv2 file holds 37 x 37 positions (518 px); the 224-px model needs 16 x 16 (bicubic, antialiased)."""
    vlm_dir, vision = _without_vision_weights(tmp_path, tiny_assets[0])
    dim = vision["dino_featurizer.pos_embed"].shape[-1]
    table = torch.randn(1, 37 * 37, dim, generator=torch.Generator().manual_seed(0))
    vision["dino_featurizer.pos_embed"] = table  # the reg4 DINOv2 has no class position (no_embed_class)
    _write_timm_files(tmp_path / "timm", vision)
    vlm = load_prismatic_vlm(vlm_dir, vision_weights_dir=tmp_path / "timm")
    grid = table.reshape(1, 37, 37, dim).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, size=(16, 16), mode="bicubic", antialias=True, align_corners=False)
    expected = expected.permute(0, 2, 3, 1).reshape(1, 256, dim)
    torch.testing.assert_close(vlm.vision_backbone.featurizer.pos_embed.detach(), expected)


def test_corrupt_checkpoint_and_wrong_folder_errors(tmp_path: Path, tiny_assets: tuple[Path, Path]) -> None:
    with pytest.raises(FileNotFoundError, match="--vlm_path"):
        load_prismatic_vlm(tmp_path)
    vlm_dir = tmp_path / "vlm"
    shutil.copytree(tiny_assets[0], vlm_dir)
    newest_checkpoint(vlm_dir / "checkpoints").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        load_prismatic_vlm(vlm_dir)


def test_strict_loading_reports_missing_unexpected_and_shapes() -> None:
    torch.manual_seed(0)
    vlm = PrismaticVLM(TINY)
    state = dict(vlm.state_dict())
    for key in [k for k in state if ".layers.1." in k]:
        del state[key]
    state["projector.fc9.weight"] = torch.zeros(1)
    state["projector.fc1.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointMismatchError) as err:
        load_state_dict_strict(vlm, state, "some.safetensors")
    text = str(err.value)
    assert "some.safetensors does not match" in text
    assert "missing 12 key(s)" in text and "language_model.model.layers.*.self_attn.q_proj.weight" in text
    assert "unexpected 1 key(s)" in text and "projector.fc9.weight" in text
    assert "projector.fc1.weight: checkpoint (3, 3)" in text


@pytest.fixture(scope="module")
def trained_lora_policy(tiny_assets: tuple[Path, Path]) -> VLAAdapterPolicy:
    """A tiny LoRA policy whose adapters, action queries and head are no longer at their initial values."""
    vlm = apply_lora(load_prismatic_vlm(tiny_assets[0], num_images=2), LoRASettings(rank=4))
    policy = VLAAdapterPolicy(vlm, LIBERO_CONSTANTS)
    torch.manual_seed(1)
    with torch.no_grad():
        for param in policy.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.02)
    return policy


def test_released_format_round_trip(
    tmp_path: Path, tiny_assets: tuple[Path, Path], trained_lora_policy: VLAAdapterPolicy
) -> None:
    """Merged `model.safetensors` + `module.`-prefixed head files, the layout of VLA-Adapter's releases."""
    folder = write_released_folder(tmp_path / "LIBERO-Spatial-Pro", trained_lora_policy, tiny_assets[1], STATS)
    loaded = load_policy(folder, num_images_in_input=2)
    assert loaded.spec.use_pro_version and loaded.spec.use_proprio
    assert loaded.dataset_statistics == STATS
    torch.testing.assert_close(actions(loaded.policy), actions(trained_lora_policy), atol=1e-5, rtol=1e-4)
    assert load_tokenizer(folder).pad_token_id == 151643


def test_project_lora_checkpoint_round_trip(
    tmp_path: Path, tiny_assets: tuple[Path, Path], trained_lora_policy: VLAAdapterPolicy
) -> None:
    spec = PolicySpec(base_vlm_path=str(tiny_assets[0]), lora={"rank": 4, "dropout": 0.0})
    folder = save_policy(
        tmp_path / "run--100_chkpt", trained_lora_policy, spec, tiny_assets[1], STATS, step=100, merged=False
    )
    assert (folder / "lora_adapter" / "adapter_model.safetensors").is_file()
    assert (folder / "action_head--100_checkpoint.pt").is_file() and not (folder / "model.safetensors").exists()
    loaded = load_policy(folder)
    torch.testing.assert_close(actions(loaded.policy), actions(trained_lora_policy), atol=1e-5, rtol=1e-4)


def test_merged_weights_equal_peft_merge(trained_lora_policy: VLAAdapterPolicy) -> None:
    import copy

    ours = merged_state_dict(trained_lora_policy.vlm)
    reference = copy.deepcopy(trained_lora_policy.vlm).merge_and_unload().state_dict()
    assert ours.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(ours[key], reference[key], atol=1e-6, rtol=1e-5)
    # the live model keeps its adapters
    assert any("lora_A" in n for n, _ in trained_lora_policy.named_parameters())


def test_policy_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_policy(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {}}))
    with pytest.raises(FileNotFoundError, match="action_head"):
        load_policy(tmp_path)


def test_stats_are_required_for_a_policy(
    tmp_path: Path, tiny_assets: tuple[Path, Path], trained_lora_policy: VLAAdapterPolicy
) -> None:
    folder = save_policy(tmp_path / "p", trained_lora_policy, PolicySpec(), tiny_assets[1], STATS)
    (folder / "dataset_statistics.json").unlink()
    with pytest.raises(ValueError, match=r"dataset_statistics\.json is missing, but .*manifest\.json lists it"):
        load_policy(folder)
    (folder / "manifest.json").unlink()  # a released folder (no manifest) without statistics
    with pytest.raises(FileNotFoundError, match=r"dataset_statistics\.json"):
        load_policy(folder)
    assert np.isfinite(actions(trained_lora_policy).numpy()).all()


def test_merge_lora_cli_writes_a_standalone_folder(
    tmp_path: Path, tiny_assets: tuple[Path, Path], trained_lora_policy: VLAAdapterPolicy
) -> None:
    from conftest import REPO_ROOT, run_python

    spec = PolicySpec(base_vlm_path=str(tiny_assets[0]), lora={"rank": 4, "dropout": 0.0})
    ckpt = save_policy(
        tmp_path / "run--7_chkpt", trained_lora_policy, spec, tiny_assets[1], STATS, step=7, merged=False
    )
    proc = run_python([str(REPO_ROOT / "vla-scripts" / "merge_lora_weights.py"), "--checkpoint_dir", str(ckpt)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    merged = tmp_path / "run--7_chkpt--merged"
    assert (merged / "model.safetensors").is_file() and not (merged / "lora_adapter").exists()
    # what VLA-Adapter's loader (transformers `from_pretrained`) reads: the file's metadata, config.json's fields
    with (merged / "model.safetensors").open("rb") as handle:
        header_size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(header_size))
    assert header.pop("__metadata__") == {"format": "pt"}
    # bf16 by default, laid out like the released checkpoints: every tensor bf16, packed back to back after the header
    assert {entry["dtype"] for entry in header.values()} == {"BF16"}
    spans = sorted(tuple(entry["data_offsets"]) for entry in header.values())
    assert spans[0][0] == 0 and all(end == start for (_, end), (start, _) in itertools.pairwise(spans))
    sizes = {key: 2 * math.prod(entry["shape"]) for key, entry in header.items()}
    assert all(entry["data_offsets"][1] - entry["data_offsets"][0] == sizes[key] for key, entry in header.items())
    assert (merged / "model.safetensors").stat().st_size == 8 + header_size + sum(sizes.values())
    config = json.loads((merged / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_prismatic.OpenVLAConfig",
        "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction",
    }
    assert config["norm_stats"] == STATS == json.loads((merged / "dataset_statistics.json").read_text())
    loaded = load_policy(merged)
    assert loaded.spec.lora is None and loaded.spec.extra["merged_lora"] == {"rank": 4, "dropout": 0.0}
    reference = actions(trained_lora_policy)
    torch.testing.assert_close(actions(loaded.policy), reference, atol=0.05, rtol=0.05)  # bf16 weights
    again = run_python([str(REPO_ROOT / "vla-scripts" / "merge_lora_weights.py"), "--checkpoint_dir", str(ckpt)])
    assert again.returncode == 2 and "--overwrite True" in again.stderr
    exact = tmp_path / "fp32"
    merge_script = str(REPO_ROOT / "vla-scripts" / "merge_lora_weights.py")
    proc = run_python([merge_script, "--checkpoint_dir", str(ckpt), "--output_dir", str(exact), "--merged_dtype=fp32"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    torch.testing.assert_close(actions(load_policy(exact).policy), reference, atol=1e-5, rtol=1e-4)
    bad = run_python([str(REPO_ROOT / "vla-scripts" / "merge_lora_weights.py"), "--merged_dtype", "fp16"])
    assert bad.returncode == 2 and "--merged_dtype must be one of bf16, fp32" in bad.stderr


def test_a_moved_run_and_its_base_vlm_still_load(
    tmp_path: Path, tiny_assets: tuple[Path, Path], trained_lora_policy: VLAAdapterPolicy
) -> None:
    """The base VLM is recorded relative to the checkpoint (and absolute); `base_vlm_path` overrides both."""
    first = tmp_path / "machine_a"
    shutil.copytree(tiny_assets[0], first / "vlm")
    spec = PolicySpec(base_vlm_path=str(first / "vlm"), lora={"rank": 4, "dropout": 0.0})
    save_policy(first / "runs" / "run--7_chkpt", trained_lora_policy, spec, tiny_assets[1], STATS, step=7, merged=False)
    ckpt = first / "runs" / "run--7_chkpt"
    recorded = json.loads((ckpt / "config.json").read_text())["vla_adapter"]
    assert recorded["base_vlm_path"] == "../../vlm" and recorded["base_vlm_path_absolute"] == str(first / "vlm")
    adapter = json.loads((ckpt / "lora_adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(first / "vlm")  # peft's own loaders find the base
    expected = actions(trained_lora_policy)

    second = tmp_path / "machine_b"
    shutil.move(first, second)  # the run and its VLM, together
    loaded = load_policy(second / "runs" / "run--7_chkpt")
    assert loaded.spec.base_vlm_path == str(second / "vlm")
    torch.testing.assert_close(actions(loaded.policy), expected, atol=1e-5, rtol=1e-4)

    alone = tmp_path / "elsewhere" / "run--7_chkpt"
    shutil.copytree(second / "runs" / "run--7_chkpt", alone)  # the checkpoint alone: neither path holds the VLM
    with pytest.raises(FileNotFoundError, match="pass --base_vlm_path"):
        load_policy(alone)
    torch.testing.assert_close(actions(load_policy(alone, base_vlm_path=second / "vlm").policy), expected)
    with pytest.raises(FileNotFoundError, match="is not a Prismatic VLM folder"):
        load_policy(alone, base_vlm_path=tmp_path / "nope")
