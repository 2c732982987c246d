"""Offline evaluation: CKA properties, no drift for an untouched model, drift after training, CLI output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from craft import CRaFTConfig, linear_cka
from prismatic.eval.offline import OfflineSettings, evaluate_offline
from prismatic.models.loaders import LoadedPolicy, PolicySpec, load_prismatic_vlm
from prismatic.models.policy import VLAAdapterPolicy
from prismatic.training.config import FinetuneConfig
from prismatic.training.trainer import train
from prismatic.vla.constants import LIBERO_CONSTANTS
from prismatic.vla.datasets.rlds.stream import StreamConfig, build_frame_stream

from conftest import REPO_ROOT, run_python

SPATIAL = "libero_spatial_no_noops"


pytestmark = pytest.mark.usefixtures("shared_episode_cache")


def test_linear_cka_properties() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 16))
    assert linear_cka(features, features) == pytest.approx(1.0)
    rotation, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    assert linear_cka(features, 3.0 * features @ rotation) == pytest.approx(1.0)  # invariant to rotation and scale
    assert linear_cka(features, rng.normal(size=(200, 16))) < 0.3  # unrelated features
    assert 0.3 < linear_cka(features, features + rng.normal(size=(200, 16))) < 0.9
    constant = np.zeros((200, 16))
    assert linear_cka(constant, constant) == 1.0 and linear_cka(features, constant) == 0.0
    with pytest.raises(ValueError, match="same n"):
        linear_cka(features, features[:10])


def test_untrained_model_has_no_drift(tiny_assets: tuple[Path, Path], tiny_libero: Path) -> None:
    torch.manual_seed(0)
    policy = VLAAdapterPolicy(load_prismatic_vlm(tiny_assets[0], num_images=2), LIBERO_CONSTANTS)
    _, info = build_frame_stream(StreamConfig(data_root_dir=tiny_libero, dataset_name=SPATIAL))
    loaded = LoadedPolicy(policy, PolicySpec(dataset_name=SPATIAL), info.statistics, tiny_assets[0])
    settings = OfflineSettings(
        data_root_dir=tiny_libero, dataset_name=SPATIAL, heldout_episode_fraction=0.1, max_samples=40, batch_size=8
    )
    result = evaluate_offline(
        loaded, load_prismatic_vlm(tiny_assets[0], num_images=2), settings, CRaFTConfig(), tiny_assets[1]
    )
    assert result["num_samples"] == 40 and result["heldout_episodes"] == 2
    assert result["retention_loss"] == pytest.approx(0.0, abs=1e-10)
    for kind in ("raw", "action_query"):
        assert len(result["cka"][kind]) == 5  # embeddings + 4 layers of the tiny LLM
        assert all(v == pytest.approx(1.0, abs=1e-6) for v in result["cka"][kind].values())
    assert set(result["action_l1"]) == {
        f"{n}/{p}" for n in ("normalized", "unnormalized") for p in ("all", "current", "next")
    }
    assert len(result["action_l1_per_dim_unnormalized"]) == 7


def test_drift_grows_after_training(tmp_path: Path, tiny_assets: tuple[Path, Path], tiny_libero: Path) -> None:
    runs = tmp_path / "runs"
    train(
        FinetuneConfig(
            vlm_path=tiny_assets[0],
            config_file_path=tiny_assets[1],
            data_root_dir=tiny_libero,
            dataset_name=SPATIAL,
            run_root_dir=runs,
            run_id_override="drift",
            batch_size=2,
            grad_accumulation_steps=1,
            max_steps=6,
            save_freq=6,
            learning_rate=5e-3,
            lora_rank=8,
            shuffle_buffer_size=200,
            heldout_episode_fraction=0.1,
        )
    )
    ckpt = runs / "drift--6_chkpt"
    proc = run_python(
        [
            str(REPO_ROOT / "vla-scripts" / "eval_offline.py"),
            "--pretrained_checkpoint",
            str(ckpt),
            "--data_root_dir",
            str(tiny_libero),
            "--max_samples",
            "40",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((ckpt / "offline_eval.json").read_text())
    assert result["dataset"] == SPATIAL and result["heldout_episodes"] == 2  # the run's held-out episodes
    assert result["retention_loss"] > 1e-4
    assert min(result["cka"]["raw"].values()) < 0.9999
    assert result["cka"]["raw"]["0"] <= 1.0 and all(0.0 <= v <= 1.0 + 1e-9 for v in result["cka"]["raw"].values())
    assert "[eval-offline]" in proc.stdout
    assert result["heldout_episode_fraction"] == 0.1 and result["heldout_unseen"] is True


@pytest.mark.parametrize(
    ("snapshot", "expected"),
    [
        ("heldout_episode_fraction: 0.0\n", "was trained on every episode, so none is held out"),
        ("dataset_name: libero_spatial_no_noops\n", "does not record the fraction it held out"),
    ],
)
def test_a_run_without_heldout_episodes_needs_an_explicit_fraction(
    tmp_path: Path, snapshot: str, expected: str
) -> None:
    """Runs train on every episode by default (like VLA-Adapter): evaluating one offline must be asked for."""
    ckpt = tmp_path / "run--6_chkpt"
    ckpt.mkdir()
    (ckpt / "finetune_config.yaml").write_text(snapshot)
    proc = run_python([str(REPO_ROOT / "vla-scripts" / "eval_offline.py"), "--pretrained_checkpoint", str(ckpt)])
    assert proc.returncode == 2 and "--heldout_episode_fraction" in proc.stderr and expected in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
