"""finetune.py end to end on the tiny assets: outputs, exact resume, DDP equivalence, crash-safe saves, errors."""

from __future__ import annotations

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

from prismatic.models.loaders import load_policy
from prismatic.training import checkpointing, metrics
from prismatic.training.config import FinetuneConfig, parse_finetune_config
from prismatic.training.schedule import lr_factor
from prismatic.training.trainer import NonFiniteTrainingError, train
from prismatic.vla.datasets.rlds import episodes as episodes_module

from conftest import REPO_ROOT, run_python

GUIDE_LINE = re.compile(
    r"^Step \d+/\d+ \| Loss: \d+\.\d{4} \| Ret: (\d+\.\d{4}/\d+\.\d{4}|-) \| λ: (\d+\.\d{3}->\d+\.\d{3}|-) \| "
    r"Conflict: (\d+\.\d{2}%|-) \| GradNorm: \d+\.\d{2} \| LR: \d\.\d{2}e[-+]\d{2}$"
)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(episodes_module.CACHE_ENV, str(tmp_path_factory.getbasetemp() / "vla_cache"))


def tiny_args(tiny_assets: tuple[Path, Path], data: Path, runs: Path, **overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "vlm_path": tiny_assets[0],
        "config_file_path": tiny_assets[1],
        "data_root_dir": data,
        "dataset_name": "libero_spatial_no_noops",
        "run_root_dir": runs,
        "run_id_override": "tiny",
        "batch_size": 2,
        "grad_accumulation_steps": 2,
        "max_steps": 4,
        "save_freq": 2,
        "console_log_freq": 1,
        "shuffle_buffer_size": 300,
        "lora_rank": 8,
        "learning_rate": 1e-3,
    }
    args.update(overrides)
    return args


def cli(args: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in args.items():
        out += [f"--{key}", str(value)]
    return out


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_craft_run_end_to_end(tmp_path: Path, tiny_assets: tuple[Path, Path], tiny_libero: Path) -> None:
    runs = tmp_path / "runs"
    run_dir = train(
        FinetuneConfig(
            **tiny_args(tiny_assets, tiny_libero, runs, use_craft=True, craft_retention_budget=0.001, craft_dual_lr=5.0)
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
    lines = [line for line in (run_dir / "train_progress.log").read_text().splitlines() if line.startswith("Step")]
    assert len(lines) == 4 and all(GUIDE_LINE.match(line) for line in lines), lines

    loaded = load_policy(ckpt)  # our checkpoint through the public loader
    assert loaded.spec.lora == {"rank": 8, "dropout": 0.0} and loaded.spec.dataset_name == "libero_spatial_no_noops"
    stats = json.loads((ckpt / "dataset_statistics.json").read_text())
    assert set(stats) == {"libero_spatial_no_noops"} and stats == loaded.dataset_statistics


def test_resume_continues_exactly(tmp_path: Path, tiny_assets: tuple[Path, Path], tiny_libero: Path) -> None:
    args = tiny_args(
        tiny_assets,
        tiny_libero,
        tmp_path / "a",
        use_craft=True,
        craft_retention_budget=0.001,
        craft_dual_lr=5.0,
        max_steps=4,
        save_freq=2,
    )
    train(FinetuneConfig(**args))
    # A second run root with the step-2 checkpoint and the logs up to step 2, resumed through the CLI.
    b = tmp_path / "b"
    (b / "tiny").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "tiny--2_chkpt", b / "tiny--2_chkpt")
    rows_a = read_metrics(tmp_path / "a" / "tiny")
    (b / "tiny" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows_a[:2]))
    proc = run_python(
        [
            str(REPO_ROOT / "vla-scripts" / "finetune.py"),
            "--resume",
            "True",
            "--resume_step",
            "2",
            "--resum_vla_path",
            str(b / "tiny--2_chkpt"),
            "--run_root_dir",
            str(b),
        ],
        env={episodes_module.CACHE_ENV: os.environ[episodes_module.CACHE_ENV]},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows_b = read_metrics(b / "tiny")
    for ra, rb in zip(rows_a[2:], rows_b[2:], strict=True):
        for key in (metrics.LOSS, metrics.RET, metrics.LAMBDA_AFTER, metrics.GRAD_NORM, metrics.LR):
            assert ra[key] == pytest.approx(rb[key], abs=1e-6, rel=1e-6), (ra["step"], key)
    for name in ("lora_adapter/adapter_model.safetensors",):
        wa, wb = load_file(str(tmp_path / "a" / "tiny--4_chkpt" / name)), load_file(str(b / "tiny--4_chkpt" / name))
        assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-6
    ha = torch.load(tmp_path / "a" / "tiny--4_chkpt" / "action_head--4_checkpoint.pt")
    hb = torch.load(b / "tiny--4_chkpt" / "action_head--4_checkpoint.pt")
    assert max((ha[k] - hb[k]).abs().max().item() for k in ha) <= 1e-6
    state = checkpointing.load_training_state(b / "tiny--4_chkpt")
    assert state["step"] == 4 and state["data"]["samples_per_process"] == 4 * 2 * 2


@pytest.mark.multiprocess
def test_two_processes_equal_one_process_with_twice_the_batch(
    tmp_path: Path, tiny_assets: tuple[Path, Path], tiny_libero: Path
) -> None:
    """Baseline steps (DDP) and a CRaFT measurement step (one manual all-reduce of both gradients)."""
    common = tiny_args(
        tiny_assets, tiny_libero, tmp_path, max_steps=3, save_freq=3, data_sharding="samples", craft_measure_freq=2
    )
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
    assert metrics.CONFLICT in rows_two[1] and rows_two[1][metrics.CONFLICT] == pytest.approx(
        rows_one[1][metrics.CONFLICT]
    )
    assert rows_two[1][metrics.RET] == pytest.approx(rows_one[1][metrics.RET], rel=1e-4)
    for name in ("action_head--3_checkpoint.pt", "proprio_projector--3_checkpoint.pt"):
        a, b = torch.load(tmp_path / "two--3_chkpt" / name), torch.load(tmp_path / "one--3_chkpt" / name)
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4, name  # the head is synchronised too
    la = load_file(str(tmp_path / "two--3_chkpt" / "lora_adapter" / "adapter_model.safetensors"))
    lb = load_file(str(tmp_path / "one--3_chkpt" / "lora_adapter" / "adapter_model.safetensors"))
    assert max((la[k] - lb[k]).abs().max().item() for k in la) < 1e-4


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
                    save_freq=10,
                    max_nonfinite_steps=2,
                    use_craft=True,
                    craft_retention_budget=1e-6,
                    craft_dual_lr=10.0,
                    craft_initial_lambda=0.5,
                )
            )
        )
    rows = read_metrics(runs / "tiny")
    assert [r[metrics.SKIPPED] for r in rows] == [0.0, 1.0, 2.0]
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
        ({"resume": True, "resum_vla_path": tmp_path}, FileNotFoundError, "training_state.pt"),
        ({"data_sharding": "frames"}, ValueError, "--data_sharding"),
    ]
    for overrides, error, message in cases:
        with pytest.raises(error, match=re.escape(message)):
            FinetuneConfig(**{**base, **overrides}).validate()
    with pytest.raises(ValueError, match="unknown --dataset_name"):
        train(FinetuneConfig(**{**base, "dataset_name": "libero_90_no_noops"}))
    # through the command line: one line, exit status 2, before any model is built
    proc = run_python([str(REPO_ROOT / "vla-scripts" / "finetune.py"), *cli({**base, "use_diffusion": True})])
    assert proc.returncode == 2 and "error: --use_diffusion True is not supported" in proc.stderr


def test_resume_mismatches_are_clear_errors(tmp_path: Path, tiny_assets: tuple[Path, Path], tiny_libero: Path) -> None:
    runs = tmp_path / "runs"
    args = tiny_args(tiny_assets, tiny_libero, runs, max_steps=2, save_freq=2)
    train(FinetuneConfig(**args))
    ckpt = runs / "tiny--2_chkpt"
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(FinetuneConfig(**args))
    with pytest.raises(ValueError, match=r"--resume_step 5 does not match .* pass --resume_step 2"):
        train(FinetuneConfig(**{**args, "max_steps": 4, "resume": True, "resume_step": 5, "resum_vla_path": ckpt}))
    with pytest.raises(ValueError, match="batch_size 2 -> 4"):
        train(FinetuneConfig(**{**args, "max_steps": 4, "resume": True, "resum_vla_path": ckpt, "batch_size": 4}))
    with pytest.raises(ValueError, match="raise --max_steps"):
        train(FinetuneConfig(**{**args, "resume": True, "resum_vla_path": ckpt}))
    (ckpt / "training_state.pt").write_bytes(b"\0corrupt")
    with pytest.raises(ValueError, match="corrupt or incomplete checkpoint"):
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
