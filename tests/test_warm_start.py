"""Warm start: a new run from a policy folder's weights (VLA-Adapter's release layout, or one of our checkpoints),
with a fresh optimizer and schedule; VLA-Adapter's `--resume True` on such a folder means the same."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.released import write_released_folder

from prismatic.models.batch import policy_batch
from prismatic.models.loaders import load_policy, load_prismatic_vlm
from prismatic.models.lora import LoRASettings, apply_lora
from prismatic.models.policy import VLAAdapterPolicy
from prismatic.training import checkpointing, metrics
from prismatic.training.config import FinetuneConfig, parse_finetune_config
from prismatic.training.trainer import train
from prismatic.vla.constants import ACTION_QUERY_TOKEN_ID, LIBERO_CONSTANTS
from prismatic.vla.datasets.rlds import episodes as episodes_module

from conftest import REPO_ROOT, as_cli_args, run_python, tiny_finetune_args

pytestmark = pytest.mark.usefixtures("shared_episode_cache")
FINETUNE = str(REPO_ROOT / "vla-scripts" / "finetune.py")
STATS = {
    "libero_spatial_no_noops": {
        "action": {"q01": [-0.5] * 6 + [0.0], "q99": [0.5] * 6 + [1.0], "mask": [True] * 6 + [False]},
        "proprio": {"q01": [-1.0] * 8, "q99": [1.0] * 8},
        "num_transitions": 10,
        "num_trajectories": 1,
    }
}


def probe_actions(policy: VLAAdapterPolicy) -> torch.Tensor:
    """The policy's actions on a fixed random batch (eval mode, no gradients)."""
    generator = torch.Generator().manual_seed(0)
    batch = policy_batch(
        [[11, 12, 13, 14] + [ACTION_QUERY_TOKEN_ID] * 64] * 2,
        0,
        torch.randn(2, 12, 224, 224, generator=generator),
        proprio=torch.randn(2, 8, generator=generator),
    )
    policy.eval()
    with torch.no_grad():
        return policy(batch).actions


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory, tiny_assets: tuple[Path, Path]) -> Path:
    """A "released" model: the tiny VLM fine-tuned (LoRA merged, queries, head and projector all moved away from
    their initial values), written in VLA-Adapter's release layout."""
    vlm = apply_lora(load_prismatic_vlm(tiny_assets[0], num_images=2), LoRASettings(rank=4))
    policy = VLAAdapterPolicy(vlm, LIBERO_CONSTANTS)
    torch.manual_seed(5)
    with torch.no_grad():
        for param in policy.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.05)
    folder = tmp_path_factory.mktemp("released") / "LIBERO-Spatial-Pro"
    return write_released_folder(folder, policy, tiny_assets[1], STATS)


def warm_args(tiny_assets: tuple[Path, Path], data: Path, runs: Path, **overrides: Any) -> dict[str, Any]:
    """A 2-step run at a learning rate so small that its weights stay those it started from."""
    return tiny_finetune_args(
        tiny_assets, data, runs, **{"lora_rank": 4, "learning_rate": 1e-12, "max_steps": 2, "save_freq": 2, **overrides}
    )


def run_finetune(args: list[str]) -> Any:
    return run_python([FINETUNE, *args], env={episodes_module.CACHE_ENV: os.environ[episodes_module.CACHE_ENV]})


def test_vla_adapter_resume_of_a_released_folder_is_a_warm_start(
    tmp_path: Path, tiny_assets: tuple[Path, Path], tiny_libero: Path, released: Path
) -> None:
    """VLA-Adapter's `--resume True --resum_vla_path <released folder>`: a new run from the folder's weights (at a
    learning rate of 1e-12 the trained policy still acts like the released one), fresh optimizer and schedule, and
    its LoRA checkpoints load on top of the released folder."""
    args = warm_args(tiny_assets, tiny_libero, tmp_path / "runs", run_id_override=None)
    proc = run_finetune(as_cli_args({**args, "resume": True, "resum_vla_path": released}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"warm start from {released}: its merged weights, action head, proprio projector and action " in proc.stdout
    assert "fresh optimizer and learning-rate schedule" in proc.stdout
    assert "has no training_state.pt" in proc.stdout
    run_dirs = [path for path in (tmp_path / "runs").iterdir() if path.name.endswith("--2_chkpt")]
    assert len(run_dirs) == 1 and run_dirs[0].name.startswith("from-LIBERO-Spatial-Pro+libero_spatial_no_noops+")
    checkpoint = run_dirs[0]
    state = checkpointing.inspect_checkpoint(checkpoint).state
    assert state["step"] == 2 and all(moments["step"] == 2 for moments in state["optimizer"]["state"].values())
    run_dir = checkpoint.parent / checkpoint.name.removesuffix("--2_chkpt")
    rows = [json.loads(line) for line in (run_dir / metrics.METRICS_FILE).read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2] and rows[0][metrics.LR] == pytest.approx(1e-12)
    saved = parse_finetune_config(["--resume", "True", "--resum_vla_path", str(checkpoint)])
    assert saved.resume and saved.init_from == released  # an exact resume of this run starts from it again

    # only the LoRA adapter was saved: it loads on top of the released folder it was trained on
    assert not (checkpoint / "model.safetensors").exists()
    loaded = load_policy(checkpoint)
    assert loaded.spec.base_vlm_path == str(released.resolve())
    torch.testing.assert_close(probe_actions(loaded.policy), probe_actions(load_policy(released).policy))
    fresh = load_prismatic_vlm(tiny_assets[0], num_images=2)  # the action head and VLM really came from the folder
    assert not torch.equal(fresh.action_queries.weight, loaded.policy.vlm.action_queries.weight)


def test_warm_started_run_resumes_exactly(
    tmp_path: Path, tiny_assets: tuple[Path, Path], tiny_libero: Path, released: Path
) -> None:
    """`--init_from` is part of the run: resuming a warm-started run at step 1 equals the uninterrupted run."""
    args = warm_args(tiny_assets, tiny_libero, tmp_path / "a", init_from=released, learning_rate=1e-3, save_freq=1)
    train(FinetuneConfig(**args))
    resumed_root = tmp_path / "b"
    shutil.copytree(tmp_path / "a" / "tiny", resumed_root / "tiny")
    (resumed_root / "tiny" / checkpointing.LATEST_POINTER).write_text("tiny--1_chkpt\n")
    shutil.copytree(tmp_path / "a" / "tiny--1_chkpt", resumed_root / "tiny--1_chkpt")
    proc = run_finetune(["--resume", "True", "--resum_vla_path", str(resumed_root / "tiny--1_chkpt")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warm start" not in proc.stdout and "resuming at step 1" in proc.stdout
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(released, elsewhere)
    again = ["--resume", "True", "--resum_vla_path", str(resumed_root / "tiny--1_chkpt"), "--init_from", str(elsewhere)]
    proc = run_finetune([*again, "--max_steps", "3"])
    assert proc.returncode == 2 and "cannot change: --init_from" in proc.stderr, proc.stderr[-2000:]
    first = load_policy(tmp_path / "a" / "tiny--2_chkpt").policy
    second = load_policy(resumed_root / "tiny--2_chkpt").policy
    torch.testing.assert_close(probe_actions(first), probe_actions(second), atol=1e-6, rtol=1e-6)
    assert not torch.allclose(probe_actions(first), probe_actions(load_policy(released).policy), atol=1e-4)


def test_warm_start_refuses_what_the_weights_contradict(
    tmp_path: Path, tiny_assets: tuple[Path, Path], tiny_libero: Path, released: Path
) -> None:
    """Flags that contradict the folder's weights, or an exact resume asked at the same time, stop before any data
    or model is loaded, with the flag to change."""
    args = warm_args(tiny_assets, tiny_libero, tmp_path / "runs")
    cases = [
        ({"init_from": released, "use_pro_version": False}, "pass --use_pro_version True"),
        ({"init_from": released, "use_proprio": False}, "pass --use_proprio True"),
        ({"init_from": tmp_path}, "--init_from"),
        ({"resume": True, "resum_vla_path": released, "resume_step": 150000}, None),  # released names carry no step
    ]
    for overrides, message in cases:
        cfg = parse_finetune_config(as_cli_args({**args, **overrides}))
        if message is None:
            assert cfg.init_from == released and cfg.resume_step is None
            continue
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            train(cfg)
    assert not (tmp_path / "runs").exists()  # nothing was written
    stepped = tmp_path / "stepped"
    shutil.copytree(released, stepped)
    (stepped / "action_head--checkpoint.pt").rename(stepped / "action_head--150000_checkpoint.pt")
    proc = run_finetune(as_cli_args({**args, "resume": True, "resum_vla_path": stepped, "resume_step": 5}))
    assert proc.returncode == 2
    assert f"error: --resume_step 5: {stepped} holds the weights of step 150000" in proc.stderr
    both = {**args, "resume": True, "resum_vla_path": stepped, "init_from": released}
    with pytest.raises(ValueError, match="pass only one of them"):
        parse_finetune_config(as_cli_args(both))


def test_released_layout_helper_matches_the_reference_layout(released: Path) -> None:
    """The stand-in release has the files VLA-Adapter publishes, and nothing of ours."""
    names = {path.name for path in released.iterdir()}
    assert {"model.safetensors", "action_head--checkpoint.pt", "proprio_projector--checkpoint.pt"} <= names
    assert {"dataset_statistics.json", "config.json", "tokenizer_config.json"} <= names
    assert not names & {"manifest.json", "training_state.pt", "finetune_config.yaml", "lora_adapter"}
    head = torch.load(released / "action_head--checkpoint.pt", weights_only=True)
    assert all(key.startswith("module.") for key in head)
    assert "vla_adapter" not in json.loads((released / "config.json").read_text())
