"""The documentation cannot drift from the code: every fenced command is checked against what it calls.

Each command in a ```bash block of the README and docs/ is classified: Python entry points must exist and accept
every `--flag` given (read from their `--help`); shell scripts must exist and know the environment variables set in
front of them; the data-loading snippet is run for real against synthetic data.
"""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]
# Commands that need hardware or a network we do not have, with the reason they are not exercised here.
NOT_EXERCISED = {
    "git clone": "needs the repository URL of the reader",
    "huggingface-cli": "needs the model hub",
}


def fenced_commands(path: Path) -> list[str]:
    """Shell commands of the ```bash blocks (continuation lines joined, comments dropped)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def all_commands() -> list[tuple[str, str]]:
    return [(path.relative_to(REPO_ROOT).as_posix(), cmd) for path in DOCS for cmd in fenced_commands(path)]


@functools.cache
def accepted_flags(script: str) -> frozenset[str]:
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / script), "--help"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120
    )
    usage = proc.stdout.split("\n\n", 1)[0]
    flags = frozenset(re.findall(r"\[--(\w+)", usage))
    assert flags, f"{script} --help printed no flags:\n{proc.stdout}\n{proc.stderr[-2000:]}"
    return flags


def check_command(command: str) -> None:
    for prefix, _ in NOT_EXERCISED.items():
        if command.startswith(prefix):
            return
    for part in re.split(r"\s*&&\s*", command):
        tokens = shlex.split(part)
        while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", tokens[0]):  # VAR=value prefixes
            tokens = tokens[1:]
        if not tokens:
            continue
        head = tokens[0]
        if head == "cd":
            continue
        if head.startswith("--"):  # flags added to the training command shown just before
            tokens = ["python", "vla-scripts/finetune.py", *tokens]
        if head == "bash":
            script = tokens[1]
            located = next(
                (p for p in (REPO_ROOT / script, *REPO_ROOT.glob(f"craft_experiments/*/{script}")) if p.is_file()), None
            )
            assert located is not None, f"{script} does not exist"
            text = located.read_text() + (REPO_ROOT / "craft_experiments" / "common.sh").read_text()
            for var in re.findall(r"\b([A-Z_][A-Z0-9_]*)=", part.split("bash", 1)[0]):
                assert var in text, f"{script} does not read {var}"
            if script == "setup.sh":
                assert all(arg in ("libero",) for arg in tokens[2:]), tokens
            continue
        script = next((t for t in tokens if t.endswith(".py") and "/" in t), None)
        if script is not None:
            assert (REPO_ROOT / script).is_file(), f"{script} does not exist"
            flags = {t[2:] for t in tokens if t.startswith("--") and len(t) > 2}
            flags -= {"standalone", "nnodes", "nproc-per-node"}  # torchrun's own
            unknown = flags - accepted_flags(script)
            assert not unknown, f"{script} does not accept {sorted(unknown)}"
            continue
        if head.endswith("python") and "-c" in tokens:
            compile(tokens[tokens.index("-c") + 1], "<doc snippet>", "exec")
            continue
        if head.startswith(".venv/bin/") and Path(REPO_ROOT / head).name in ("ruff", "python"):
            continue
        raise AssertionError(f"unrecognised documented command: {command}")


@pytest.mark.parametrize(("doc", "command"), all_commands())
def test_documented_command(doc: str, command: str) -> None:
    check_command(command)


def test_every_doc_has_commands_checked() -> None:
    covered = {doc for doc, _ in all_commands()}
    assert {
        "README.md",
        "docs/TRAINING_AND_EVALUATION.md",
        "docs/TRAINING_AND_EVALUATION.zh-CN.md",
        "docs/DATASETS.md",
    } <= covered


def test_the_loading_snippet_runs(tiny_libero: Path) -> None:
    snippet = next(cmd for _, cmd in all_commands() if "RLDSDataset(" in cmd)
    code = shlex.split(snippet)[2].replace("data/libero", str(tiny_libero))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.strip().splitlines()[-1]) > 0


def test_guide_metric_names_exist_in_the_code() -> None:
    """Both ways: every metric the guide names is logged, and every metric logged is documented."""
    import dataclasses

    from craft import CRaFTStepStats
    from prismatic.training import metrics, validation

    guide = (REPO_ROOT / "docs" / "TRAINING_AND_EVALUATION.md").read_text()
    documented = set(re.findall(r"`((?:VLA Train|VLA Val|CRaFT|System)/[^`]+)`", guide))
    named = {v for k, v in vars(metrics).items() if k.isupper() and isinstance(v, str) and "/" in v}
    named.discard(metrics.VALIDATION_PREFIX)
    named |= {v for k, v in vars(validation).items() if k.startswith("VAL_")}
    craft_keys = set(metrics.craft_metrics(CRaFTStepStats(*[0] * len(dataclasses.fields(CRaFTStepStats)))))
    assert craft_keys <= named
    emitted = named
    assert set(metrics.GUIDE_METRICS) <= emitted
    assert documented <= emitted, documented - emitted
    assert emitted <= documented, emitted - documented
