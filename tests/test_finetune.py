"""finetune.py end to end on the tiny assets: outputs, exact resume, DDP equivalence, crash-safe saves, errors."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from craft import CRaFTConfig
from prismatic.models.loaders import load_policy
from prismatic.training import checkpointing, metrics, validation
from prismatic.training.config import FinetuneConfig, parse_finetune_config
from prismatic.training.schedule import lr_factor
from prismatic.training.trainer import NonFiniteTrainingError, train
from prismatic.vla.datasets.rlds import episodes as episodes_module

from conftest import REPO_ROOT, as_cli_args, run_python, tiny_finetune_args

GUIDE_LINE = re.compile(
    r"^Step \d+/\d+ \| Loss: \d+\.\d{4} \| Ret: (\d+\.\d{4}/\d+\.\d{4}|-) \| λ: (\d+\.\d{3}->\d+\.\d{3}|-) \| "
    r"Conflict: (\d+\.\d{2}%|-) \| GradNorm: \d+\.\d{2} \| LR: \d\.\d{2}e[-+]\d{2}$"
)


pytestmark = pytest.mark.usefixtures("shared_episode_cache")
tiny_args = tiny_finetune_args
cli = as_cli_args


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """Every row of a run's metrics.jsonl, as written (duplicates would show)."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_craft_run_end_to_end(tmp_path: Path, tiny_assets: tuple[Path, Path], tiny_libero: Path) -> None:
    runs = tmp_path / "runs"
    run_dir = train(
        FinetuneConfig(
            **tiny_args(
                tiny_assets,
                tiny_libero,
                runs,
                use_craft=True,
                craft_retention_budget=0.001,
                craft_dual_lr=5.0,
                heldout_episode_fraction=0.1,
                use_val_set=True,
                val_freq=2,
                val_time_limit=3,
            )
        )
    )
    assert run_dir == runs / "tiny"
    for name in (
        "finetune_config.yaml",
        "dataset_statistics.json",
        "episodes.json",
        "train_progress.log",
        "metrics.jsonl",
        checkpointing.LATEST_POINTER,
    ):
        assert (run_dir / name).is_file(), name
    assert (run_dir / checkpointing.LATEST_POINTER).read_text().strip() == "tiny--4_chkpt"
    ckpt = runs / "tiny--4_chkpt"
    expected = {
        "config.json",
        "processor_config.json",
        "preprocessor_config.json",
        "lora_adapter",
        "action_head--4_checkpoint.pt",
        "proprio_projector--4_checkpoint.pt",
        "action_queries--4_checkpoint.pt",
        "dataset_statistics.json",
        "training_state.pt",
        "finetune_config.yaml",
        "tokenizer_config.json",
    }
    assert expected <= {p.name for p in ckpt.iterdir()}
    assert (runs / "tiny--2_chkpt").is_dir()

    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    guide_keys = {
        metrics.LOSS,
        metrics.CURR_L1,
        metrics.NEXT_L1,
        metrics.GRAD_NORM,
        metrics.LR,
        metrics.RET,
        metrics.RET_NONFINITE,
        metrics.LAMBDA,
        metrics.LAMBDA_BEFORE,
        metrics.LAMBDA_AFTER,
        metrics.CONFLICT,
    }
    assert guide_keys <= set(rows[0])
    assert rows[0][metrics.RET] == 0.0  # the model equals its anchor before the first update
    assert rows[-1][metrics.RET] > 0.001 and rows[-1][metrics.LAMBDA_AFTER] > rows[-1][metrics.LAMBDA_BEFORE] > 0
    assert all(r[metrics.LAMBDA_BEFORE] == p[metrics.LAMBDA_AFTER] for p, r in itertools.pairwise(rows))
    # --use_val_set: held-out L1 and retention every --val_freq steps, measured on the same frames each time
    validated = [r for r in rows if validation.VAL_L1 in r]
    assert [r["step"] for r in validated] == [2, 4]
    assert all(r[validation.VAL_SAMPLES] >= 2 and 0 < r[validation.VAL_L1] < 2 for r in validated)
    assert validated[0][validation.VAL_RETENTION] >= 0 and validated[-1][validation.VAL_RETENTION] > 0
    cka_keys = {validation.VAL_CKA_RAW, validation.VAL_CKA_AQ}  # concat anchor: raw tokens (layer m) and action queries
    assert all(cka_keys <= set(r) and all(0.0 <= r[key] <= 1.0 + 1e-9 for key in cka_keys) for r in validated)
    assert validated[-1][validation.VAL_CKA_RAW] < 1.0  # 4 LoRA steps moved the raw features
    lines = [line for line in (run_dir / "train_progress.log").read_text().splitlines() if line.startswith("Step")]
    assert len(lines) == 4 and all(GUIDE_LINE.match(line) for line in lines), lines

    loaded = load_policy(ckpt)  # our checkpoint through the public loader
    assert loaded.spec.lora == {"rank": 8, "dropout": 0.0} and loaded.spec.dataset_name == "libero_spatial_no_noops"
    stats = json.loads((ckpt / "dataset_statistics.json").read_text())
    assert set(stats) == {"libero_spatial_no_noops"} and stats == loaded.dataset_statistics


def trained_state(ckpt: Path) -> dict[str, torch.Tensor]:
    """Every trained tensor of a checkpoint: LoRA (with the action queries), action head, proprio projector, the
    stand-alone action queries, and the optimizer's moments."""
    step = checkpointing.checkpoint_step(ckpt)
    out = {f"lora/{k}": v for k, v in load_file(str(ckpt / "lora_adapter" / "adapter_model.safetensors")).items()}
    for component in ("action_head", "proprio_projector", "action_queries"):
        for key, value in torch.load(ckpt / f"{component}--{step}_checkpoint.pt", weights_only=True).items():
            out[f"{component}/{key}"] = value
    optimizer = checkpointing.inspect_checkpoint(ckpt).state["optimizer"]
    for index, moments in optimizer["state"].items():
        for key, value in moments.items():
            out[f"optimizer/{index}/{key}"] = torch.as_tensor(value)
    return out


@pytest.mark.parametrize(
    ("base_precision", "cheap"),
    [("fp32", {}), ("bf16", {}), ("fp32", {"craft_retention_fraction": 0.5}), ("fp32", {"craft_slack_margin": 1.0})],
    ids=["fp32", "bf16", "retention_fraction", "slack_margin"],
)
def test_resume_continues_exactly(
    base_precision: str, cheap: dict[str, float], tmp_path: Path, tiny_assets: tuple[Path, Path], tiny_libero: Path
) -> None:
    """Resuming at step 2 crosses the end of the warmup (step 3) and the decay boundary (step 4): every logged value,
    every trained tensor and the optimizer state equal those of the uninterrupted run, with fp32 or bf16 frozen
    weights (the trained tensors and the optimizer state are fp32 either way), and with L_ret from random subsets
    (`--craft_retention_fraction`: the subsets are seeded by step, so a resumed run draws the same ones), and with
    slack steps (`--craft_slack_margin`: the last L_ret is in the checkpoint, so a resumed run skips the same steps)."""
    args = tiny_args(
        tiny_assets,
        tiny_libero,
        tmp_path / "a",
        base_precision=base_precision,
        **cheap,
        use_craft=True,
        craft_retention_budget=0.001,
        craft_dual_lr=5.0,
        max_steps=4,
        save_freq=2,
        lr_warmup_steps=3,
        num_steps_before_decay=3,
    )
    train(FinetuneConfig(**args))
    rows_a = read_metrics(tmp_path / "a" / "tiny")
    if "craft_slack_margin" in cheap:  # step 3 is slack by step 2's L_ret, which the resumed run must restore
        assert [r[metrics.RET_GRAD_STEP] for r in rows_a] == [1.0, 0.0, 0.0, 1.0]
    assert [r[metrics.LR] for r in rows_a] == pytest.approx([1e-4, 4e-4, 7e-4, 1e-4])
    # Another run root with the step-2 checkpoint and the logs of all 4 steps (a crash after step 4 was logged but
    # before its checkpoint was complete), resumed through the CLI.
    resumed_root = tmp_path / "b"
    shutil.copytree(tmp_path / "a" / "tiny", resumed_root / "tiny")
    (resumed_root / "tiny" / checkpointing.LATEST_POINTER).write_text("tiny--2_chkpt\n")
    shutil.copytree(tmp_path / "a" / "tiny--2_chkpt", resumed_root / "tiny--2_chkpt")
    proc = run_python(
        [
            str(REPO_ROOT / "vla-scripts" / "finetune.py"),
            "--resume",
            "True",
            "--resume_step",
            "2",
            "--resum_vla_path",
            str(resumed_root / "tiny--2_chkpt"),
        ],
        env={episodes_module.CACHE_ENV: os.environ[episodes_module.CACHE_ENV]},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows_b = read_metrics(resumed_root / "tiny")
    assert [r["step"] for r in rows_b] == [1, 2, 3, 4]  # each step once
    for ra, rb in zip(rows_a, rows_b, strict=True):
        keys = (metrics.LOSS, metrics.RET, metrics.LAMBDA_AFTER, metrics.GRAD_NORM, metrics.LR, metrics.RET_GRAD_STEP)
        for key in keys:
            assert ra[key] == pytest.approx(rb[key], abs=1e-6, rel=1e-6), (ra["step"], key)
    state_a, state_b = trained_state(tmp_path / "a" / "tiny--4_chkpt"), trained_state(resumed_root / "tiny--4_chkpt")
    assert state_a.keys() == state_b.keys()
    assert any(k.startswith("proprio_projector/") for k in state_a) and any("exp_avg_sq" in k for k in state_a)
    for key in state_a:
        assert state_a[key].dtype == torch.float32, key
        torch.testing.assert_close(state_a[key], state_b[key], atol=1e-6, rtol=1e-6, msg=key)
    info = checkpointing.inspect_checkpoint(resumed_root / "tiny--4_chkpt")
    assert info.step == 4 and info.state["data"]["samples_per_process"] == 4 * 2 * 2
    assert info.state["craft"]["dual"]["lambda"] == pytest.approx(rows_a[-1][metrics.LAMBDA_AFTER])


@pytest.mark.multiprocess
@pytest.mark.parametrize("method", ["baseline", "baseline_checkpointing", "craft"])
def test_two_processes_equal_one_process_with_twice_the_batch(
    method: str, tmp_path: Path, tiny_assets: tuple[Path, Path], tiny_libero: Path
) -> None:
    """Baseline: DDP steps (gradients as bucket views) and a CRaFT measurement step (one manual all-reduce of both
    gradients). Baseline with gradient checkpointing: forwards recomputed inside DDP's backward, no accumulation.
    CRaFT: every step through CRaFT's all-reduce, projection and dual update (no DDP wrapper). Same losses, lambda,
    weights and optimizer state."""
    flags = {
        "baseline": {"craft_measure_freq": 2},
        "baseline_checkpointing": {"gradient_checkpointing": True, "grad_accumulation_steps": 1},
        "craft": {"use_craft": True, "craft_retention_budget": 0.001, "craft_dual_lr": 5.0},
    }[method]
    common = tiny_args(tiny_assets, tiny_libero, tmp_path, max_steps=3, save_freq=3, data_sharding="samples", **flags)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nnodes",
            "1",
            "--nproc-per-node",
            "2",
            str(REPO_ROOT / "vla-scripts" / "finetune.py"),
            *cli({**common, "run_id_override": "two", "batch_size": 2}),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=REPO_ROOT,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    one = run_python(
        [str(REPO_ROOT / "vla-scripts" / "finetune.py"), *cli({**common, "run_id_override": "one", "batch_size": 4})],
        env=env,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    rows_two, rows_one = read_metrics(tmp_path / "two"), read_metrics(tmp_path / "one")
    for r2, r1 in zip(rows_two, rows_one, strict=True):
        assert r2[metrics.LOSS] == pytest.approx(r1[metrics.LOSS], rel=1e-5)
        assert r2[metrics.GRAD_NORM] == pytest.approx(r1[metrics.GRAD_NORM], rel=1e-4)
        assert (metrics.RET in r2) == (metrics.RET in r1)
        if metrics.RET in r2:
            assert r2[metrics.RET] == pytest.approx(r1[metrics.RET], rel=1e-4)
            assert r2[metrics.CONFLICT] == pytest.approx(r1[metrics.CONFLICT])
            assert r2[metrics.LAMBDA_AFTER] == pytest.approx(r1[metrics.LAMBDA_AFTER], rel=1e-4)
    assert (metrics.RET in rows_two[1]) == (method != "baseline_checkpointing")
    if method == "craft":
        assert rows_two[-1][metrics.LAMBDA_AFTER] > 0  # the dual update ran, identically
    state_two, state_one = trained_state(tmp_path / "two--3_chkpt"), trained_state(tmp_path / "one--3_chkpt")
    for key in state_one:  # the head and proprio projector are synchronised too
        torch.testing.assert_close(state_two[key], state_one[key], atol=1e-4, rtol=1e-3, msg=key)


def test_accumulation_equals_one_big_batch_with_craft(
    tmp_path: Path, tiny_assets: tuple[Path, Path], tiny_libero: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CRaFT averages both gradients over micro-batches and updates lambda once per optimizer step: 2 micro-batches
    of 2 samples equal one batch of 4. (The action head's input noise is drawn per micro-batch, so it is off here.)"""
    from prismatic.models.policy import VLAAdapterPolicy

    real_init = VLAAdapterPolicy.__init__

    def without_noise(self: VLAAdapterPolicy, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        self.action_head.train_noise_std = 0.0

    monkeypatch.setattr(VLAAdapterPolicy, "__init__", without_noise)
    common = tiny_args(
        tiny_assets,
        tiny_libero,
        tmp_path,
        max_steps=3,
        save_freq=3,
        use_craft=True,
        craft_retention_budget=0.001,
        craft_dual_lr=5.0,
    )
    train(FinetuneConfig(**{**common, "run_id_override": "accum", "batch_size": 2, "grad_accumulation_steps": 2}))
    train(FinetuneConfig(**{**common, "run_id_override": "big", "batch_size": 4, "grad_accumulation_steps": 1}))
    rows_accum, rows_big = read_metrics(tmp_path / "accum"), read_metrics(tmp_path / "big")
    for ra, rb in zip(rows_accum, rows_big, strict=True):
        for key in (metrics.LOSS, metrics.RET, metrics.LAMBDA_AFTER, metrics.GRAD_NORM, metrics.CONFLICT):
            assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-7), (ra["step"], key)
    assert rows_big[-1][metrics.LAMBDA_AFTER] > 0
    state_accum, state_big = trained_state(tmp_path / "accum--3_chkpt"), trained_state(tmp_path / "big--3_chkpt")
    for key in state_big:  # Adam normalises tiny gradients, so rounding can move a rare element by ~lr / 20
        torch.testing.assert_close(state_accum[key], state_big[key], atol=1e-4, rtol=1e-3, msg=key)


def test_a_crash_during_a_save_keeps_the_previous_checkpoint(
    tmp_path: Path, tiny_assets: tuple[Path, Path], tiny_libero: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = checkpointing.write_policy_files
    calls = {"n": 0}

    def crash_on_second(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        real(*args, **kwargs)
        if calls["n"] == 2:
            raise OSError("disk full while writing the checkpoint")

    monkeypatch.setattr(checkpointing, "write_policy_files", crash_on_second)
    runs = tmp_path / "runs"
    with pytest.raises(OSError, match="disk full"):
        train(FinetuneConfig(**tiny_args(tiny_assets, tiny_libero, runs, save_latest_checkpoint_only=True)))
    assert sorted(p.name for p in runs.iterdir()) == ["tiny", "tiny--2_chkpt"]  # no half-written folder left
    assert (runs / "tiny" / checkpointing.LATEST_POINTER).read_text().strip() == "tiny--2_chkpt"
    loaded = load_policy(runs / "tiny--2_chkpt")
    assert loaded.policy.action_head is not None


def test_nonfinite_steps_are_skipped_then_abort(
    tmp_path: Path, tiny_assets: tuple[Path, Path], tiny_libero: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prismatic.models.policy import VLAAdapterPolicy

    real_forward = VLAAdapterPolicy.forward
    state = {"calls": 0}

    def poisoned(self: VLAAdapterPolicy, *args: Any, **kwargs: Any) -> Any:
        out = real_forward(self, *args, **kwargs)
        state["calls"] += 1
        if state["calls"] > 2:  # from the second optimizer step on (2 micro-batches per step)
            out.actions = out.actions * float("nan")
        return out

    monkeypatch.setattr(VLAAdapterPolicy, "forward", poisoned)
    runs = tmp_path / "runs"
    with pytest.raises(NonFiniteTrainingError, match="--learning_rate"):
        train(
            FinetuneConfig(
                **tiny_args(
                    tiny_assets,
                    tiny_libero,
                    runs,
                    max_steps=10,
                    save_freq=1,
                    max_nonfinite_steps=3,
                    use_craft=True,
                    craft_retention_budget=1e-6,
                    craft_dual_lr=10.0,
                    craft_initial_lambda=0.5,
                )
            )
        )
    rows = read_metrics(runs / "tiny")
    assert [r[metrics.SKIPPED] for r in rows] == [0.0, 1.0, 2.0, 3.0]
    # Steps 2 and 3 were skipped: their checkpoints hold exactly the weights and optimizer state of step 1.
    after_one = trained_state(runs / "tiny--1_chkpt")
    for step in (2, 3):
        skipped = trained_state(runs / f"tiny--{step}_chkpt")
        assert all(torch.equal(after_one[k], skipped[k]) for k in after_one), step
    assert not (runs / "tiny--4_chkpt").exists()  # the run stopped at step 4, before saving
    # the retention loss stays finite, but a skipped step moves neither the weights nor lambda
    assert rows[1][metrics.RET] > 0 and rows[1][metrics.LAMBDA_AFTER] == rows[1][metrics.LAMBDA_BEFORE]
    assert rows[2][metrics.LAMBDA_BEFORE] == rows[1][metrics.LAMBDA_AFTER]
    log = (runs / "tiny" / "train_progress.log").read_text()
    assert "Loss: nan" in log and "update skipped" in log


def test_lr_schedule_warmup_and_decay() -> None:
    factors = [lr_factor(s, warmup_steps=4, decay_step=6) for s in range(8)]
    assert factors == pytest.approx([0.1, 0.325, 0.55, 0.775, 1.0, 1.0, 0.1, 0.1])
    assert [lr_factor(s, 0, 3) for s in range(5)] == [1.0, 1.0, 1.0, 0.1, 0.1]


def test_progress_line_has_the_guide_shape() -> None:
    craft = {
        metrics.LOSS: 0.1234,
        metrics.RET: 0.0821,
        metrics.LAMBDA_BEFORE: 0.0,
        metrics.LAMBDA_AFTER: 0.0,
        metrics.CONFLICT: 0.1234,
        metrics.GRAD_NORM: 1.23,
        metrics.LR: 5e-4,
    }
    assert metrics.progress_line(1234, 20000, craft, 0.1) == (
        "Step 1234/20000 | Loss: 0.1234 | Ret: 0.0821/0.1000 | λ: 0.000->0.000 | Conflict: 12.34% | "
        "GradNorm: 1.23 | LR: 5.00e-04"
    )
    baseline = {metrics.LOSS: float("nan"), metrics.GRAD_NORM: float("inf"), metrics.LR: 5e-5}
    assert metrics.progress_line(3, 10, baseline, 0.1) == (
        "Step 3/10 | Loss: nan | Ret: - | λ: - | Conflict: - | GradNorm: inf | LR: 5.00e-05"
    )


def test_bad_inputs_fail_early_with_the_flag(tmp_path: Path, tiny_assets: tuple[Path, Path], tiny_libero: Path) -> None:
    base = tiny_args(tiny_assets, tiny_libero, tmp_path / "runs")
    cases = [
        ({"use_diffusion": True}, ValueError, "--use_diffusion True is not supported"),
        ({"batch_size": 0}, ValueError, "--batch_size must be >= 1"),
        ({"craft_retention_budget": -1.0}, ValueError, "--craft_retention_budget"),
        ({"craft_anchor_type": "both"}, ValueError, "--craft_anchor_type"),
        ({"vlm_path": tmp_path / "nope"}, FileNotFoundError, "--vlm_path"),
        ({"config_file_path": tmp_path}, FileNotFoundError, "--config_file_path"),
        ({"data_root_dir": tmp_path / "nope"}, FileNotFoundError, "--data_root_dir"),
        ({"resume": True}, ValueError, "--resum_vla_path"),
        ({"resume": True, "resum_vla_path": tmp_path / "nope"}, FileNotFoundError, "--resum_vla_path"),
        ({"data_sharding": "frames"}, ValueError, "--data_sharding"),
        ({"craft_retention_fraction": 0.0}, ValueError, "--craft_retention_fraction must be > 0"),
        ({"craft_retention_fraction": 2.0}, ValueError, "--craft_retention_fraction must be <= 1"),
        ({"craft_slack_margin": 1.5}, ValueError, "--craft_slack_margin must be <= 1"),
        (
            {"craft_cache_anchor_features": True},
            ValueError,
            "--craft_cache_anchor_features True needs --image_aug False",
        ),
        ({"base_precision": "fp16"}, ValueError, "--base_precision must be one of auto, bf16, fp32"),
        ({"merged_dtype": "int8"}, ValueError, "--merged_dtype must be one of bf16, fp32"),
    ]
    for overrides, error, message in cases:
        with pytest.raises(error, match=re.escape(message)):
            FinetuneConfig(**{**base, **overrides}).validate()
    with pytest.raises(ValueError, match="unknown --dataset_name"):
        train(FinetuneConfig(**{**base, "dataset_name": "libero_90_no_noops"}))
    # through the command line: one line, exit status 2, before any model is built
    proc = run_python([str(REPO_ROOT / "vla-scripts" / "finetune.py"), *cli({**base, "use_diffusion": True})])
    assert proc.returncode == 2 and "error: --use_diffusion True is not supported" in proc.stderr


def test_vla_adapter_readme_command_is_accepted_and_unsupported_requests_are_refused(
    tiny_assets: tuple[Path, Path], tiny_libero: Path, tmp_path: Path
) -> None:
    """VLA-Adapter's README fine-tuning flags (paths substituted) parse and validate; asking for what we lack stops."""
    readme = {
        "vlm_path": tiny_assets[0],
        "config_file_path": tiny_assets[1],
        "data_root_dir": tiny_libero,
        "dataset_name": "libero_spatial_no_noops",
        "run_root_dir": tmp_path / "outputs",
        "use_film": False,
        "num_images_in_input": 2,
        "use_proprio": True,
        "use_lora": True,
        "use_fz": False,
        "use_minivlm": True,
        "image_aug": True,
        "num_steps_before_decay": 400000,
        "max_steps": 400005,
        "save_freq": 5000,
        "save_latest_checkpoint_only": False,
        "merge_lora_during_training": True,
        "batch_size": 1,
        "grad_accumulation_steps": 8,
        "learning_rate": 2e-4,
        "lora_rank": 64,
        "use_pro_version": True,
        "wandb_entity": "YOUR_WANDB_ENTITY",
        "wandb_project": "libero_spatial_no_noops",
        "run_id_note": "VLA-Adapter--libero_spatial_no_noops--2025_01_01-00_00_00",
    }
    others = {  # the rest of VLA-Adapter's FinetuneConfig, at its values
        "use_val_set": False,
        "val_freq": 10000,
        "val_time_limit": 180,
        "num_diffusion_steps": 50,
        "diffusion_sample_freq": 50,
        "phase": "Training",
        "phase1_path": "None",
        "use_l1_regression": True,
        "use_diffusion": False,
    }
    cfg = parse_finetune_config(cli({**readme, **others}))
    cfg.validate()
    assert (cfg.batch_size, cfg.grad_accumulation_steps, cfg.lora_rank, cfg.use_minivlm) == (1, 8, 64, True)
    refused = [
        ({"use_film": True}, "--use_film True"),
        ({"use_minivlm": False}, "--use_minivlm False"),
        ({"use_fz": True}, "--use_fz True"),
        ({"phase": "Inference"}, "--phase 'Inference'"),
        ({"use_val_set": True}, "--use_val_set True validates on held-out episodes"),
    ]
    for overrides, message in refused:
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_finetune_config(cli({**readme, **overrides})).validate()
    full = parse_finetune_config(cli({**readme, "use_fz": True, "use_lora": False}))
    full.validate()  # --use_fz True with full fine-tuning is what we do: the whole model is saved


def test_craft_flags_are_the_fields_of_craft_config() -> None:
    """One source: every CRaFTConfig field is a `--craft_<field>` flag with the same type and default."""
    craft_fields = {field.name: field for field in dataclasses.fields(CRaFTConfig)}
    flags = {
        field.name.removeprefix("craft_"): field
        for field in dataclasses.fields(FinetuneConfig)
        if field.name.startswith("craft_") and field.name != "craft_measure_freq"
    }
    assert flags.keys() == craft_fields.keys()
    for name, field in craft_fields.items():
        assert (flags[name].type, flags[name].default) == (field.type, field.default), name
    assert FinetuneConfig(craft_dual_lr=0.5, craft_anchor_layer_idx=-2).craft_config() == CRaFTConfig(
        dual_lr=0.5, anchor_layer_idx=-2
    )
    with pytest.raises(ValueError, match=r"^--craft_dual_lr must be >= 0 \(got -1.0\)$"):
        FinetuneConfig(craft_dual_lr=-1.0).craft_config()


def test_resume_mismatches_are_clear_errors(tmp_path: Path, tiny_assets: tuple[Path, Path], tiny_libero: Path) -> None:
    runs = tmp_path / "runs"
    args = tiny_args(tiny_assets, tiny_libero, runs, max_steps=2, save_freq=2)
    train(FinetuneConfig(**args))
    ckpt = runs / "tiny--2_chkpt"
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(FinetuneConfig(**args))
    with pytest.raises(ValueError, match=r"--resume_step 5 does not match .* pass --resume_step 2"):
        train(FinetuneConfig(**{**args, "max_steps": 4, "resume": True, "resume_step": 5, "resum_vla_path": ckpt}))
    with pytest.raises(ValueError, match="--batch_size 2 -> 4"):
        train(FinetuneConfig(**{**args, "max_steps": 4, "resume": True, "resum_vla_path": ckpt, "batch_size": 4}))
    with pytest.raises(ValueError, match="raise --max_steps"):
        train(FinetuneConfig(**{**args, "resume": True, "resum_vla_path": ckpt}))
    with pytest.raises(FileNotFoundError, match=r"no training_state\.pt: not a checkpoint of this trainer"):
        train(FinetuneConfig(**{**args, "max_steps": 4, "resume": True, "resum_vla_path": tmp_path}))
    (ckpt / "training_state.pt").write_bytes(b"\0corrupt")
    with pytest.raises(ValueError, match=r"training_state\.pt has 8 bytes"):
        train(FinetuneConfig(**{**args, "max_steps": 4, "resume": True, "resum_vla_path": ckpt}))


def test_resume_takes_unset_flags_from_the_checkpoint(
    tmp_path: Path, tiny_assets: tuple[Path, Path], tiny_libero: Path
) -> None:
    runs = tmp_path / "runs"
    train(FinetuneConfig(**tiny_args(tiny_assets, tiny_libero, runs, max_steps=2, save_freq=2, lora_rank=4)))
    cfg = parse_finetune_config(
        ["--resume", "True", "--resum_vla_path", str(runs / "tiny--2_chkpt"), "--max_steps", "9"]
    )
    assert cfg.lora_rank == 4 and cfg.batch_size == 2 and Path(cfg.vlm_path) == tiny_assets[0]
    assert cfg.max_steps == 9 and cfg.resume


def test_wrapper_infers_and_corrects_the_resume_step(tmp_path: Path) -> None:
    ckpt = tmp_path / "run--300_chkpt"
    ckpt.mkdir()
    env = {
        **os.environ,
        "DRY_RUN": "1",
        "RESUME": "True",
        "RESUME_STEP": "200",
        "RESUME_VLA_PATH": str(ckpt),
        "PYTHON": sys.executable,
    }
    proc = subprocess.run(
        ["bash", str(REPO_ROOT / "vla-scripts" / "run_finetune_libero.sh")],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "does not match" in proc.stderr and "using 300" in proc.stderr
    assert "--resume_step 300" in proc.stdout and "--vlm_path" not in proc.stdout  # the rest comes from the checkpoint
    fresh = subprocess.run(
        ["bash", str(REPO_ROOT / "vla-scripts" / "run_finetune_libero.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "DRY_RUN": "1", "USE_CRAFT": "True", "PYTHON": sys.executable},
        cwd=REPO_ROOT,
    )
    assert (
        "--use_craft True" in fresh.stdout
        and "--batch_size 4" in fresh.stdout
        and "--grad_accumulation_steps 4" in fresh.stdout
        and "--learning_rate 2e-4" in fresh.stdout
    )


def test_wandb_offline_logs_the_guide_keys(
    tmp_path: Path, tiny_assets: tuple[Path, Path], tiny_libero: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_SILENT", "true")
    runs = tmp_path / "runs"
    train(
        FinetuneConfig(
            **tiny_args(
                tiny_assets,
                tiny_libero,
                runs,
                max_steps=2,
                save_freq=2,
                use_craft=True,
                use_wandb=True,
                wandb_mode="offline",
                wandb_log_freq=1,
            )
        )
    )
    offline_runs = list((runs / "tiny" / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    history = list(offline_runs[0].glob("run-*.wandb"))
    assert len(history) == 1
    logged = history[0].read_bytes()  # the offline run log (protobuf records) holds the metric names
    for key in (metrics.LOSS, metrics.CURR_L1, metrics.RET, metrics.LAMBDA, metrics.CONFLICT, metrics.LR):
        assert key.encode() in logged, key


def test_cached_anchor_features_change_nothing_but_the_cost(
    tmp_path: Path, tiny_assets: tuple[Path, Path], tiny_libero: Path
) -> None:
    """`--craft_cache_anchor_features True` (exact): the same losses, lambda and weights as computing f~ every time."""
    common = tiny_args(
        tiny_assets,
        tiny_libero,
        tmp_path,
        use_craft=True,
        craft_retention_budget=0.001,
        craft_dual_lr=5.0,
        image_aug=False,
        max_steps=3,
        save_freq=3,
    )
    train(FinetuneConfig(**{**common, "run_id_override": "cached", "craft_cache_anchor_features": True}))
    train(FinetuneConfig(**{**common, "run_id_override": "computed"}))
    rows_cached, rows_computed = read_metrics(tmp_path / "cached"), read_metrics(tmp_path / "computed")
    for rc, rf in zip(rows_cached, rows_computed, strict=True):
        for key in (metrics.LOSS, metrics.RET, metrics.LAMBDA_AFTER, metrics.GRAD_NORM, metrics.CONFLICT):
            assert rc[key] == pytest.approx(rf[key], rel=1e-6, abs=1e-9), (rc["step"], key)
    cached, computed = trained_state(tmp_path / "cached--3_chkpt"), trained_state(tmp_path / "computed--3_chkpt")
    for key in computed:
        torch.testing.assert_close(cached[key], computed[key], atol=1e-6, rtol=1e-6, msg=key)


def test_the_anchor_cache_returns_what_the_anchor_computes(tiny_assets: tuple[Path, Path]) -> None:
    from prismatic.models.anchor import Anchor
    from prismatic.models.batch import random_batch
    from prismatic.models.loaders import load_prismatic_vlm
    from prismatic.models.lora import LoRASettings, apply_lora

    vlm = apply_lora(load_prismatic_vlm(tiny_assets[0], num_images=2), LoRASettings(rank=4))
    cached = Anchor(vlm, CRaFTConfig(cache_anchor_features=True))
    plain = Anchor(vlm, CRaFTConfig())
    batch = random_batch(4, generator=torch.Generator().manual_seed(0))
    first = cached.features(batch)
    again = cached.features(batch.select([2, 0]))  # the same frames, reordered: all hits
    assert (cached.cache.hits, cached.cache.misses) == (2, 4)
    torch.testing.assert_close(first, plain.features(batch), atol=1e-6, rtol=1e-5)
    assert torch.equal(again, first[[2, 0]])
