"""`bash vla-scripts/gpu_check.sh`: one line and exit 0 without CUDA; its CPU dry run (tiny preset) trains through
the trainer's code, single-process and 2-process (gloo), and prints one JSON line per run."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch

from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "vla-scripts" / "gpu_check.sh"


def run_check(*flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *flags],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would really run")
def test_without_cuda_it_says_so_in_one_line_and_exits_0() -> None:
    proc = run_check()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == [
        f"gpu_check: no CUDA device visible (torch {torch.__version__}, CUDA build {torch.version.cuda}); "
        "nothing to check here"
    ]


@pytest.mark.multiprocess
def test_cpu_dry_run_trains_baseline_and_craft_in_one_and_two_processes() -> None:
    proc = run_check(
        *("--device", "cpu", "--preset", "tiny", "--batch_size", "2", "--lora_rank", "8", "--steps", "3"),
        env={"GPU_CHECK_DDP": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(row["method"], row["world_size"]) for row in rows] == [
        ("baseline", 1),
        ("craft", 1),
        ("baseline", 2),
        ("craft", 2),
    ]
    for row in rows:
        assert row["finite"] and len(row["losses"]) == 3 and row["step_s"] > 0 and row["samples_per_s"] > 0
        assert row["frozen_weight_dtypes"] == ["bf16"] and row["trainable_weight_dtypes"] == ["fp32"]
        assert row["precision"] == "frozen weights bf16, trainable fp32, autocast bf16"
        assert row["sdpa_kernels"] and row["device"] == "cpu" and row["gpu"] is None
        assert row["torch"] == torch.__version__ and row["peak_memory_allocated_gib"] is None
    assert [row["ddp_wrapper"] for row in rows] == [False, False, True, False]  # CRaFT reduces its own gradients
    assert rows[0]["losses"][0] == rows[1]["losses"][0]  # same weights and first batch: the same first loss
