"""A run you can trust for a week: checkpoints that are never unpickled, verified, never overwritten, resumes that
refuse silent changes, logs with one row per step, retention, and one-line errors for every user mistake."""

from __future__ import annotations

import hashlib
import json
import os
import runpy
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from prismatic.models.loaders import load_policy
from prismatic.training import checkpointing, trainer
from prismatic.training.checkpointing import NonFiniteTrainingError
from prismatic.training.config import FinetuneConfig, parse_finetune_config
from prismatic.training.metrics import read_metrics
from prismatic.training.resume import check_resume
from prismatic.training.trainer import train
from prismatic.util.checkpoint_io import CheckpointFileError, write_manifest
from prismatic.vla.datasets.rlds import episodes as episodes_module

from conftest import REPO_ROOT, as_cli_args, tiny_finetune_args

SCRIPTS = REPO_ROOT / "vla-scripts"
DATASET = "libero_spatial_no_noops"


pytestmark = pytest.mark.usefixtures("shared_episode_cache")
argv = as_cli_args


def tiny_args(tiny_assets: tuple[Path, Path], data: Path, runs: Path, **overrides: Any) -> dict[str, Any]:
    """CRaFT, one micro-batch per step, LoRA rank 4."""
    base = {"grad_accumulation_steps": 1, "shuffle_buffer_size": 100, "lora_rank": 4, "use_craft": True}
    return tiny_finetune_args(tiny_assets, data, runs, **{**base, **overrides})


@pytest.fixture(scope="module")
def finished_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_assets: tuple[Path, Path], tiny_libero: Path
) -> tuple[Path, dict[str, Any]]:
    """A CRaFT run to step 4 with checkpoints at 2 and 4 (copy it before changing anything)."""
    runs = tmp_path_factory.mktemp("finished") / "runs"
    args = tiny_args(tiny_assets, tiny_libero, runs)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(episodes_module.CACHE_ENV, str(tmp_path_factory.getbasetemp() / "vla_cache"))
        train(FinetuneConfig(**args))
    return runs, args


@pytest.fixture
def run_copy(finished_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    runs, args = finished_run
    shutil.copytree(runs, tmp_path / "runs")
    return tmp_path / "runs", {**args, "run_root_dir": tmp_path / "runs"}


def folder_digest(folder: Path) -> str:
    digest = hashlib.md5()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def run_script(script: str, args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run a vla-scripts entry point in this process; returns (exit code, stderr)."""
    old = sys.argv
    sys.argv = [str(SCRIPTS / script), *args]
    code = 0
    try:
        runpy.run_path(str(SCRIPTS / script), run_name="__main__")
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    finally:
        sys.argv = old
    return code, capsys.readouterr().err


def malicious_pickle(path: Path, marker: Path) -> None:
    """A `.pt` file whose unpickling would run a shell command creating `marker`."""

    class Payload:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    torch.save({"weight": Payload()}, path)


# ---------------------------------------------------------------------------------------------------------------
# safe loading and integrity
# ---------------------------------------------------------------------------------------------------------------
PT_SLOTS = (
    "training_state.pt",
    "action_head--4_checkpoint.pt",
    "proprio_projector--4_checkpoint.pt",
    "action_queries--4_checkpoint.pt",
)


@pytest.mark.parametrize("slot", PT_SLOTS)
def test_a_malicious_pickle_in_any_slot_is_refused_and_never_runs(
    slot: str,
    run_copy: tuple[Path, dict[str, Any]],
    tiny_libero: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_model: None,
) -> None:
    runs, _ = run_copy
    ckpt = runs / "tiny--4_chkpt"
    marker = tmp_path / "PAYLOAD_RAN"
    malicious_pickle(ckpt / slot, marker)
    write_manifest(ckpt)  # an attacker can rewrite the manifest too: safety must not depend on it
    resume = argv({"resume": True, "resum_vla_path": ckpt, "max_steps": 6})
    results = {"resume": run_script("finetune.py", resume, capsys)}
    if slot != "training_state.pt":  # the policy loaders never read the training state
        results["eval"] = run_script(
            "eval_libero.py",
            ["--pretrained_checkpoint", str(ckpt), "--env_factory", "helpers.fake_libero:FakeLiberoFactory"],
            capsys,
        )
        results["offline eval"] = run_script(
            "eval_offline.py",
            [
                "--pretrained_checkpoint",
                str(ckpt),
                "--data_root_dir",
                str(tiny_libero),
                "--heldout_episode_fraction",
                "0.1",
            ],
            capsys,
        )
        results["merge"] = run_script("merge_lora_weights.py", ["--checkpoint_dir", str(ckpt)], capsys)
    print({k: v[1] for k, v in results.items()})  # shown in the resolution note (pytest -s)
    for name, (code, stderr) in results.items():
        assert code == 2, (name, stderr)
        assert f"cannot read {ckpt / slot}: it holds objects other than tensors" in stderr, (name, stderr)
        assert stderr.count("\n") == 1, (name, stderr)  # one line, no traceback
    assert not marker.exists()


def test_a_malicious_prismatic_vlm_checkpoint_is_refused(
    tiny_assets: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_libero: Path
) -> None:
    vlm = tmp_path / "vlm"
    shutil.copytree(tiny_assets[0], vlm)
    (step_file,) = (vlm / "checkpoints").glob("*.pt")
    marker = tmp_path / "PAYLOAD_RAN"
    malicious_pickle(step_file, marker)
    args = tiny_args(tiny_assets, tiny_libero, tmp_path / "runs", vlm_path=vlm)
    code, stderr = run_script("finetune.py", argv(args), capsys)
    assert code == 2 and f"cannot read {step_file}: it holds objects other than tensors" in stderr
    assert not marker.exists()


def test_a_flipped_byte_in_a_component_file_is_named(
    run_copy: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    runs, _ = run_copy
    ckpt = runs / "tiny--4_chkpt"
    head = ckpt / "action_head--4_checkpoint.pt"
    original = head.read_bytes()
    data = bytearray(original)
    data[-2000:-1936] = bytes(b ^ 0xFF for b in data[-2000:-1936])  # 64 bytes inside the tensor data
    head.write_bytes(bytes(data))
    with pytest.raises(CheckpointFileError, match=f"{head} does not match its sha256"):
        load_policy(ckpt)
    code, stderr = run_script("finetune.py", argv({"resume": True, "resum_vla_path": ckpt, "max_steps": 6}), capsys)
    assert code == 2 and f"{head} does not match its sha256" in stderr
    head.write_bytes(original[:1000])  # truncated
    with pytest.raises(CheckpointFileError, match=f"{head} has 1000 bytes"):
        load_policy(ckpt)
    head.write_bytes(original)
    shutil.rmtree(ckpt / "lora_adapter")
    with pytest.raises(CheckpointFileError, match=r"tiny--4_chkpt/lora_adapter is missing, but .* lists it"):
        load_policy(ckpt)


def test_released_folders_without_a_manifest_still_load(run_copy: tuple[Path, dict[str, Any]]) -> None:
    runs, _ = run_copy
    ckpt = runs / "tiny--4_chkpt"
    (ckpt / "manifest.json").unlink()
    assert load_policy(ckpt).policy.action_head is not None
    with pytest.raises(CheckpointFileError, match=r"has no manifest\.json"):
        checkpointing.verify_checkpoint(ckpt)  # but a resume needs a complete checkpoint of this trainer


# ---------------------------------------------------------------------------------------------------------------
# nothing completed is overwritten
# ---------------------------------------------------------------------------------------------------------------
def test_a_colliding_resume_changes_nothing_and_a_new_run_id_branches(
    run_copy: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    runs, _ = run_copy
    before = {name: folder_digest(runs / name) for name in ("tiny--2_chkpt", "tiny--4_chkpt", "tiny")}
    pointer = (runs / "tiny" / "latest_checkpoint.txt").read_text()
    resume = {"resume": True, "resum_vla_path": runs / "tiny--2_chkpt", "max_steps": 6}
    code, stderr = run_script("finetune.py", argv(resume), capsys)
    assert code == 2, stderr
    assert (
        "run tiny already has checkpoints after step 2 (tiny--4_chkpt); resuming from step 2 would replace them"
        in stderr
    )
    code, stderr = run_script("finetune.py", argv({**resume, "learning_rate": 1e-5}), capsys)
    assert code == 2 and "changed flags: --learning_rate 0.001 -> 1e-05" in stderr
    print("collision:", stderr, before)
    assert {name: folder_digest(runs / name) for name in before} == before
    assert (runs / "tiny" / "latest_checkpoint.txt").read_text() == pointer

    branch = {**resume, "run_id_note": "from2", "max_steps": 3, "save_freq": 3}
    code, stderr = run_script("finetune.py", argv(branch), capsys)
    assert code == 0, stderr
    assert {name: folder_digest(runs / name) for name in before} == before
    assert (runs / "tiny--from2--3_chkpt").is_dir()
    rows = read_metrics(runs / "tiny--from2" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]  # the history up to step 2 comes along
    assert (runs / "tiny--from2" / "latest_checkpoint.txt").read_text().strip() == "tiny--from2--3_chkpt"


def test_a_new_run_never_writes_into_another_runs_folder(
    run_copy: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    runs, args = run_copy
    code, stderr = run_script("finetune.py", argv(args), capsys)
    assert code == 2 and "already holds a run: resume it (--resume True --resum_vla_path" in stderr
    # `tiny--note` is another run: pruning `tiny` (keep 1) must not touch its checkpoints, nor the other way round
    other = runs / "tiny--note--2_chkpt"
    shutil.copytree(runs / "tiny--2_chkpt", other)
    assert checkpointing.RunPaths(runs, "tiny").checkpoints() == {2: runs / "tiny--2_chkpt", 4: runs / "tiny--4_chkpt"}
    checkpointing.apply_retention(checkpointing.RunPaths(runs, "tiny"), keep=1)
    assert other.is_dir() and not (runs / "tiny--2_chkpt").exists()


def test_staging_leftovers_are_cleaned_and_an_interrupted_swap_is_undone(run_copy: tuple[Path, dict[str, Any]]) -> None:
    runs, _ = run_copy
    paths = checkpointing.RunPaths(runs, "tiny")
    (runs / ".tiny--6_chkpt.abc123.tmp").mkdir()
    (runs / ".tiny--6_chkpt.abc123.tmp" / "model.safetensors").write_bytes(b"half")
    os.replace(runs / "tiny--4_chkpt", runs / ".tiny--4_chkpt.old-4242")  # crashed between the two renames
    (runs / ".other--2_chkpt.x.tmp").mkdir()  # another run's: not ours to touch
    removed = paths.clean_staging_leftovers()
    assert removed == [runs / ".tiny--6_chkpt.abc123.tmp"]
    assert (runs / "tiny--4_chkpt").is_dir() and (runs / ".other--2_chkpt.x.tmp").is_dir()
    checkpointing.verify_checkpoint(runs / "tiny--4_chkpt")


# ---------------------------------------------------------------------------------------------------------------
# resume refuses silent changes
# ---------------------------------------------------------------------------------------------------------------
def test_resume_with_changed_flags_is_refused_unless_allowed(
    run_copy: tuple[Path, dict[str, Any]],
    tiny_assets: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    runs, _ = run_copy
    ckpt = runs / "tiny--4_chkpt"
    other_vlm = tmp_path / "other_vlm"
    shutil.copytree(tiny_assets[0], other_vlm)
    config = json.loads((other_vlm / "config.json").read_text())
    (other_vlm / "config.json").write_text(json.dumps({**config, "seed": 123}))  # a different VLM folder
    resume = {"resume": True, "resum_vla_path": ckpt, "max_steps": 6}
    changed = {**resume, "learning_rate": 1e-5, "use_craft": False, "vlm_path": other_vlm, "craft_dual_lr": 0.5}
    code, stderr = run_script("finetune.py", argv(changed), capsys)
    assert code == 2 and stderr.count("\n") == 1
    for part in ("--learning_rate 0.001 -> 1e-05", "--use_craft True -> False", f"-> {other_vlm}", "--craft_dual_lr"):
        assert part in stderr, stderr
    assert "--allow_resume_config_change True" in stderr
    print("changed flags:", stderr)
    code, stderr = run_script(
        "finetune.py", argv({**resume, "lora_rank": 8, "allow_resume_config_change": True}), capsys
    )
    assert code == 2 and "cannot change: --lora_rank 4 -> 8" in stderr
    code, stderr = run_script(
        "finetune.py",
        argv({**resume, "dataset_name": "libero_goal_no_noops", "allow_resume_config_change": True}),
        capsys,
    )
    assert code == 2 and "cannot change: --dataset_name libero_spatial_no_noops -> libero_goal_no_noops" in stderr
    print("fixed flags:", stderr)
    # A copy of the same VLM and the checkpoint as config bundle (the guide's resume command) are not changes.
    same_vlm = tmp_path / "same_vlm"
    shutil.copytree(tiny_assets[0], same_vlm)
    cfg = parse_finetune_config(argv({**resume, "vlm_path": same_vlm, "config_file_path": ckpt}))
    info = checkpointing.inspect_checkpoint(ckpt)
    assert check_resume(cfg, info, world_size=1) == []
    # Allowed: the new learning rate really applies, and the change is logged.
    code, stderr = run_script(
        "finetune.py", argv({**resume, "learning_rate": 1e-5, "allow_resume_config_change": True}), capsys
    )
    assert code == 0, stderr
    rows = read_metrics(runs / "tiny" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["VLA Train/Learning Rate"] for r in rows] == [1e-3] * 4 + [1e-5] * 2
    log = (runs / "tiny" / "train_progress.log").read_text()
    assert "[finetune] step 4: resuming with changed flags: --learning_rate 0.001 -> 1e-05" in log


def test_none_is_accepted_for_optional_flags() -> None:
    for spelling in ("None", "none", "null", "NULL"):
        cfg = parse_finetune_config(["--craft_anchor_layer_idx", spelling, f"--max_grad_norm={spelling}"])
        assert cfg.craft_anchor_layer_idx is None and cfg.max_grad_norm is None
    assert parse_finetune_config(["--craft_anchor_layer_idx", "-2"]).craft_anchor_layer_idx == -2


# ---------------------------------------------------------------------------------------------------------------
# logs after resume
# ---------------------------------------------------------------------------------------------------------------
def test_resuming_from_an_older_checkpoint_keeps_each_step_once(
    run_copy: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    runs, _ = run_copy
    # As after a crash at step 4, before its checkpoint was complete: the logs run ahead of the newest checkpoint.
    shutil.rmtree(runs / "tiny--4_chkpt")
    (runs / "tiny" / "metrics.jsonl").open("a").write('{"step": 5, "VLA Train/Los')  # a line torn by the crash
    code, stderr = run_script(
        "finetune.py", argv({"resume": True, "resum_vla_path": runs / "tiny--2_chkpt", "max_steps": 5}), capsys
    )
    assert code == 0, stderr
    steps = [json.loads(line)["step"] for line in (runs / "tiny" / "metrics.jsonl").read_text().splitlines()]
    print("steps after resume:", steps)
    assert steps == [1, 2, 3, 4, 5]
    lines = [
        line for line in (runs / "tiny" / "train_progress.log").read_text().splitlines() if line.startswith("Step")
    ]
    assert [int(line.split()[1].split("/")[0]) for line in lines] == [1, 2, 3, 4, 5]
    assert (runs / "tiny" / "latest_checkpoint.txt").read_text().strip() == "tiny--5_chkpt"


# ---------------------------------------------------------------------------------------------------------------
# blow-ups and retention
# ---------------------------------------------------------------------------------------------------------------
def test_an_exploding_update_is_skipped_and_never_saved(
    tiny_assets: tuple[Path, Path], tiny_libero: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    args = tiny_args(
        tiny_assets, tiny_libero, runs, learning_rate=1e10, max_steps=6, save_freq=1, max_nonfinite_steps=3
    )
    with pytest.raises(NonFiniteTrainingError, match=r"3 consecutive steps were skipped .* --max_update_ratio 1\.0"):
        train(FinetuneConfig(**args))
    rows = read_metrics(runs / "tiny" / "metrics.jsonl")
    assert [r["VLA Train/Skipped Steps"] for r in rows] == [1.0, 2.0, 3.0]
    assert all(r["VLA Train/Update Ratio"] > 1e8 for r in rows)
    assert "update skipped" in (runs / "tiny" / "train_progress.log").read_text()
    for step, folder in checkpointing.RunPaths(runs, "tiny").checkpoints().items():
        weights = torch.load(folder / f"action_head--{step}_checkpoint.pt")
        assert max(w.abs().max().item() for w in weights.values()) < 100


def test_weights_that_blew_up_are_never_saved() -> None:
    sane = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.full((2,), -5.0))]
    checkpointing.check_saveable(sane, 7)
    for bad in (float("nan"), float("inf"), 1e9):
        with pytest.raises(NonFiniteTrainingError, match="refusing to save step 7"):
            checkpointing.check_saveable([*sane, torch.nn.Parameter(torch.tensor([1.0, bad]))], 7)


def test_keep_last_n_checkpoints_keeps_the_optimizer_state_only_in_the_newest(
    tiny_assets: tuple[Path, Path], tiny_libero: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    train(FinetuneConfig(**tiny_args(tiny_assets, tiny_libero, runs, save_freq=1, keep_last_n_checkpoints=2)))
    kept = checkpointing.RunPaths(runs, "tiny").checkpoints()
    assert list(kept) == [3, 4]
    for folder in kept.values():
        checkpointing.verify_checkpoint(folder)  # both complete and consistent with their manifests
    older, newest = (torch.load(folder / "training_state.pt", weights_only=True) for folder in kept.values())
    assert older["optimizer"] is None and newest["optimizer"] is not None
    assert (kept[3] / "training_state.pt").stat().st_size < (kept[4] / "training_state.pt").stat().st_size / 3
    assert load_policy(kept[3]).policy.action_head is not None  # still a policy to evaluate
    code, stderr = run_script("finetune.py", argv({"resume": True, "resum_vla_path": kept[3], "max_steps": 6}), capsys)
    assert code == 2 and "holds no optimizer state" in stderr, stderr


# ---------------------------------------------------------------------------------------------------------------
# one-line errors, before the model is built
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail the test if a case gets as far as building the model."""

    def forbidden(*_: Any, **__: Any) -> None:
        raise AssertionError("the model was built before the error was found")

    monkeypatch.setattr(trainer, "build_policy", forbidden)
    yield


def break_dataset(data: Path, how: str) -> Path:
    shard = sorted((data / DATASET).glob("*/*.tfrecord*"))[0]
    shard.write_bytes(b"" if how == "empty" else shard.read_bytes()[:-100])
    return shard


BAD_INPUTS: list[tuple[str, dict[str, Any], str]] = [
    ("wrong type", {"batch_size": "abc"}, "error: --batch_size: Couldn't parse 'abc' into an int"),
    ("bad bool", {"use_craft": "maybe"}, "error: --use_craft: Couldn't parse 'maybe' into a bool"),
    ("inf learning rate", {"learning_rate": "inf"}, "error: --learning_rate must be a finite number (got inf)"),
    ("nan dual lr", {"craft_dual_lr": "nan"}, "error: --craft_dual_lr must be a finite number (got nan)"),
    ("negative weight decay", {"weight_decay": -1}, "error: --weight_decay must be >= 0 (got -1.0)"),
    ("run id escaping the root", {"run_id_note": "../../x"}, "error: --run_id_note '../../x': use letters"),
    ("unknown dataset", {"dataset_name": "libero_90_no_noops"}, "error: unknown --dataset_name 'libero_90_no_noops'"),
    ("bad wandb mode", {"wandb_mode": "cloud"}, "error: --wandb_mode must be one of online, offline, disabled"),
    ("keep 0 checkpoints", {"keep_last_n_checkpoints": 0}, "error: --keep_last_n_checkpoints must be >= 1 (got 0)"),
    ("missing vision weights dir", {"vision_weights_dir": "/nope"}, "error: --vision_weights_dir /nope does not exist"),
]


@pytest.mark.parametrize(("case", "flags", "message"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_flags_get_one_line_before_the_model_is_built(
    case: str,
    flags: dict[str, Any],
    message: str,
    tiny_assets: tuple[Path, Path],
    tiny_libero: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_model: None,
) -> None:
    code, stderr = run_script("finetune.py", argv({**tiny_args(tiny_assets, tiny_libero, tmp_path), **flags}), capsys)
    print(f"| {case} | `{' '.join(argv(flags))}` | {stderr.strip()} |")
    assert code == 2 and stderr.startswith(message) and stderr.count("\n") == 1, stderr
    assert not (tmp_path / "tiny").exists() or not any((tmp_path / "tiny").iterdir())


BAD_FILES = [
    "truncated component",
    "lora_adapter deleted",
    "statistics deleted",
    "different lora rank",
    "different dataset",
    "corrupt training state",
    "empty shard",
    "truncated shard",
]


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_files_get_one_line_before_the_model_is_built(
    case: str,
    run_copy: tuple[Path, dict[str, Any]],
    tiny_libero: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_model: None,
) -> None:
    runs, args = run_copy
    ckpt = runs / "tiny--4_chkpt"
    data = tmp_path / "data"
    shutil.copytree(tiny_libero, data)
    resume = {"resume": True, "resum_vla_path": ckpt, "max_steps": 6, "data_root_dir": data}
    if case == "truncated component":
        path = ckpt / "proprio_projector--4_checkpoint.pt"
        path.write_bytes(path.read_bytes()[:500])
        expected = f"error: {path} has 500 bytes"
    elif case == "lora_adapter deleted":
        shutil.rmtree(ckpt / "lora_adapter")
        expected = f"error: {ckpt / 'lora_adapter'} is missing, but"
    elif case == "statistics deleted":
        (ckpt / "dataset_statistics.json").unlink()
        expected = f"error: {ckpt / 'dataset_statistics.json'} is missing, but"
    elif case == "different lora rank":
        resume = {**resume, "lora_rank": 8, "allow_resume_config_change": True}
        expected = f"error: resuming from {ckpt} cannot change: --lora_rank 4 -> 8"
    elif case == "different dataset":
        resume = {**resume, "dataset_name": "libero_goal_no_noops"}
        expected = f"error: resuming from {ckpt} cannot change: --dataset_name {DATASET} -> libero_goal_no_noops"
    elif case == "corrupt training state":
        (ckpt / "training_state.pt").write_bytes(b"\0" * 64)
        write_manifest(ckpt)  # consistent manifest: the file itself must be refused
        expected = f"error: cannot read {ckpt / 'training_state.pt'}: it is truncated or damaged"
    else:
        shard = break_dataset(data, "empty" if case == "empty shard" else "truncated")
        expected = f"error: {shard}: " + ("empty file" if case == "empty shard" else "truncated")
        resume = {**args, "run_id_override": "fresh", "data_root_dir": data}
    code, stderr = run_script("finetune.py", argv(resume), capsys)
    print(f"| {case} | {stderr.strip()} |")
    assert code == 2 and stderr.startswith(expected) and stderr.count("\n") == 1, stderr


# ---------------------------------------------------------------------------------------------------------------
# WandB honours its own environment
# ---------------------------------------------------------------------------------------------------------------
def test_wandb_mode_comes_from_the_environment_when_the_flag_is_not_given(
    tiny_assets: tuple[Path, Path], tiny_libero: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("WANDB_MODE", "offline")  # no login on this machine, no --wandb_mode flag
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc credentials
    args = tiny_args(tiny_assets, tiny_libero, tmp_path / "runs", use_wandb=True, max_steps=1, save_freq=1)
    train(FinetuneConfig(**args))
    assert len(list((tmp_path / "wandb_dir" / "wandb").glob("offline-run-*"))) == 1
    monkeypatch.setenv("WANDB_MODE", "disabled")
    train(FinetuneConfig(**{**args, "run_id_override": "disabled"}))
    assert len(list((tmp_path / "wandb_dir" / "wandb").glob("offline-run-*"))) == 1
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ValueError, match="WANDB_MODE must be one of online, offline, disabled"):
        FinetuneConfig(**{**args, "run_id_override": "bad"}).validate()


def test_the_wrapper_leaves_wandb_mode_to_wandb(tmp_path: Path) -> None:
    def planned(**env: str) -> str:
        proc = subprocess.run(
            ["bash", str(SCRIPTS / "run_finetune_libero.sh")],
            capture_output=True,
            text=True,
            env={**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable, **env},
            cwd=REPO_ROOT,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert "--wandb_mode" not in planned(WANDB_MODE="disabled", USE_WANDB="True")  # reaches finetune.py as is
    assert "--wandb_mode offline" in planned(TRAIN_WANDB_MODE="offline")
    assert "--keep_last_n_checkpoints 2" in planned(KEEP_LAST_N_CHECKPOINTS="2")
