"""Shared test helpers: repository paths, the real fixtures (skipped when absent) and small generated assets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Real public artifacts (VLA-Adapter's config bundle, a LIBERO observation); present next to the project on our
# machines, absent in a user's clone.
FIXTURES_DIR = REPO_ROOT.parent / "shared" / "fixtures"
REAL_CONFIG_BUNDLE = FIXTURES_DIR / "vla_adapter_configs"


def require_fixture(path: Path) -> Path:
    """Return `path`, or skip the test with the reason when the shared fixtures are not available."""
    if not path.exists():
        pytest.skip(f"real fixture {path} is absent (only our CI machines have ../shared/fixtures)")
    return path


def run_python(
    code_or_args: str | list[str], timeout: float = 300, env: dict[str, str] | None = None, cwd: Path = REPO_ROOT
) -> subprocess.CompletedProcess[str]:
    """Run the venv's Python in a fresh process (a string is passed as `-c` code)."""
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else code_or_args
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=full_env
    )


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(tiny VLM folder in the native Prismatic format, its config bundle), written once per test session."""
    from prismatic.assets.tiny_vlm import write_tiny_assets

    root = tmp_path_factory.mktemp("tiny_assets")
    vlm_dir, bundle_dir, _ = write_tiny_assets(root / "prism-qwen25-tiny-dinosiglip-224px", root / "configs-tiny")
    return vlm_dir, bundle_dir


@pytest.fixture(scope="session")
def tiny_libero(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic LIBERO-Spatial dataset (2 episodes per task) shared by the training tests."""
    from prismatic.synthetic.rlds_writer import SyntheticSuiteSpec, write_synthetic_suite

    root = tmp_path_factory.mktemp("tiny_libero")
    write_synthetic_suite(
        root, SyntheticSuiteSpec("libero_spatial_no_noops", episodes_per_task=2, seed=3), num_workers=2
    )
    return root


@pytest.fixture
def shared_episode_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Episode tables cached once per test session, never in the user's ~/.cache."""
    from prismatic.vla.datasets.rlds import episodes as episodes_module

    monkeypatch.setenv(episodes_module.CACHE_ENV, str(tmp_path_factory.getbasetemp() / "vla_cache"))


def tiny_finetune_args(tiny_assets: tuple[Path, Path], data: Path, runs: Path, **overrides: Any) -> dict[str, Any]:
    """finetune.py flags of a few-second run on the tiny assets (run id `tiny`)."""
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
    return {**args, **overrides}


def as_cli_args(args: dict[str, Any]) -> list[str]:
    """`{"batch_size": 2}` -> `["--batch_size", "2"]`."""
    return [item for key, value in args.items() for item in (f"--{key}", str(value))]
