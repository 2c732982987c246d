"""What a resume may change, and where it may write, decided before anything expensive is built.

Every flag that defines the run (model paths, LoRA settings, data, method and CRaFT flags, optimizer and schedule)
is compared with the checkpoint's saved configuration. A difference stops the resume with one line listing each
changed flag, unless `--allow_resume_config_change True`, which applies the new values and logs them. Flags in
`ALWAYS_MUTABLE` (how long to train, how often to log and save, where to log) may change freely. Flags in
`FIXED_ON_RESUME` change the shape or meaning of the saved weights and can never change on resume.

A resume never replaces a finished checkpoint: resuming a run from an older checkpoint while newer ones exist is
refused (resume from the newest, or continue as a new run with `--run_id_note` / `--run_id_override`).

A warm start (`--init_from`) is a new run, so nothing is compared with a saved configuration; but the weights it
starts from fix the structure of the policy, and flags that contradict them are refused here.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

from prismatic.models.loaders import PolicyFolder, inspect_policy_folder, newest_checkpoint
from prismatic.models.savers import TOKENIZER_AND_PROCESSOR_FILES
from prismatic.training.checkpointing import CheckpointInfo, RunPaths
from prismatic.training.config import TRAINING_STATE, FinetuneConfig, decode_config_snapshot
from prismatic.training.metrics import METRICS_FILE, read_metrics
from prismatic.util.cli import UserInputError
from prismatic.vla.datasets.registry import resolve_mixture, robot_constants

ALWAYS_MUTABLE = frozenset(
    {
        "max_steps",
        "save_freq",
        "save_latest_checkpoint_only",
        "keep_last_n_checkpoints",
        "merge_lora_during_training",
        "merged_dtype",
        "console_log_freq",
        "use_wandb",
        "wandb_project",
        "wandb_entity",
        "wandb_mode",
        "wandb_log_freq",
        "max_nonfinite_steps",
        "max_update_ratio",
        "gradient_checkpointing",
        "run_root_dir",
        "run_id_note",
        "run_id_override",
        "resume",
        "resume_step",
        "resum_vla_path",
        "allow_resume_config_change",
        "use_val_set",
        "val_freq",
        "val_time_limit",
        "phase1_path",
        "num_diffusion_steps",
        "diffusion_sample_freq",
    }
)
FIXED_ON_RESUME = {
    "use_lora": "the checkpoint holds {old} weights",
    "lora_rank": "the checkpoint's LoRA matrices have rank {old}",
    "use_pro_version": "the checkpoint's action head is of the other kind",
    "use_proprio": "the checkpoint's action head was trained with use_proprio={old}",
    "num_images_in_input": "the checkpoint was trained on {old} image(s) per sample",
    "dataset_name": "the checkpoint's normalisation statistics and action head belong to {old}",
    "init_from": "the checkpoint's weights were trained from {old}",
}


@dataclasses.dataclass(frozen=True)
class FlagChange:
    flag: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"--{self.flag} {self.old} -> {self.new}"


def _fingerprint(files: list[Path]) -> str | None:
    digest = hashlib.sha256()
    for path in files:
        if not path.is_file():
            return None
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _same_path(old: Path, new: Path) -> bool:
    return Path(old).resolve() == Path(new).resolve()


def _same_vlm(old: Path, new: Path) -> bool:
    """Same folder, or a copy of it (same config and newest checkpoint file name and size)."""
    if _same_path(old, new):
        return True
    try:
        old_weights = newest_checkpoint(Path(old) / "checkpoints")
        new_weights = newest_checkpoint(Path(new) / "checkpoints")
    except FileNotFoundError:
        return False
    same_weights = (old_weights.name, old_weights.stat().st_size) == (new_weights.name, new_weights.stat().st_size)
    return same_weights and _fingerprint([Path(old) / "config.json"]) == _fingerprint([Path(new) / "config.json"])


def _same_data(old: Path, new: Path, dataset_name: str) -> bool:
    """Same folder, or one holding the same datasets (identical `dataset_info.json` of every member)."""
    if _same_path(old, new):
        return True
    for config, _ in resolve_mixture(dataset_name):
        infos = [sorted((Path(root) / config.name).glob("*/dataset_info.json")) for root in (old, new)]
        if not infos[0] or [_fingerprint([p]) for p in infos[0]] != [_fingerprint([p]) for p in infos[1]]:
            return False
    return True


def _same_tokenizer(bundle: Path, checkpoint: Path) -> bool:
    """The config bundle's tokenizer and processor files equal those the checkpoint carries (its own copy)."""
    names = [name for name in TOKENIZER_AND_PROCESSOR_FILES if (checkpoint / name).is_file()]
    return _fingerprint([bundle / n for n in names]) == _fingerprint([checkpoint / n for n in names])


def changed_flags(saved: FinetuneConfig, now: FinetuneConfig, checkpoint: Path) -> list[FlagChange]:
    """Flags that define the run and differ between the checkpoint's configuration and this one."""
    changes = []
    for field in dataclasses.fields(FinetuneConfig):
        name = field.name
        old, new = getattr(saved, name), getattr(now, name)
        if name in ALWAYS_MUTABLE or old == new:
            continue
        if name == "vlm_path" and _same_vlm(old, new):
            continue
        if name == "data_root_dir" and _same_data(old, new, now.dataset_name):
            continue
        if name == "config_file_path" and _same_tokenizer(Path(new), checkpoint):
            continue
        if name in ("vision_weights_dir", "init_from") and None not in (old, new) and _same_path(old, new):
            continue
        changes.append(FlagChange(name, old, new))
    return changes


def check_resume(cfg: FinetuneConfig, info: CheckpointInfo, world_size: int) -> list[FlagChange]:
    """Refuse a resume that is inconsistent or would silently change the run; returns the allowed changes."""
    folder = info.folder
    if cfg.resume_step is not None and cfg.resume_step != info.step:
        raise UserInputError(
            f"--resume_step {cfg.resume_step} does not match {folder}, which holds step {info.step}: pass "
            f"--resume_step {info.step} (or point --resum_vla_path at the step-{cfg.resume_step} checkpoint)"
        )
    if info.step >= cfg.max_steps:
        raise UserInputError(
            f"the checkpoint is at step {info.step} and --max_steps is {cfg.max_steps}: raise --max_steps"
        )
    changes = changed_flags(decode_config_snapshot(info.config_snapshot), cfg, folder)
    if info.world_size != world_size:
        changes.append(FlagChange("nproc-per-node (processes)", info.world_size, world_size))
    fixed = [c for c in changes if c.flag in FIXED_ON_RESUME]
    if fixed:
        reasons = "; ".join(f"{c} ({FIXED_ON_RESUME[c.flag].format(old=c.old)})" for c in fixed)
        raise UserInputError(
            f"resuming from {folder} cannot change: {reasons}. Resume with the checkpoint's values, or start a new run"
        )
    if changes and not cfg.allow_resume_config_change:
        raise UserInputError(
            f"resuming from {folder} with changed flags: {', '.join(map(str, changes))}. Restore the checkpoint's "
            "values, or pass --allow_resume_config_change True to apply the new ones (each change is logged)"
        )
    return changes


def check_destination(paths: RunPaths, info: CheckpointInfo | None) -> None:
    """Refuse a run that would replace or mix into another run's files (before anything is written)."""
    existing = paths.checkpoints()
    start = info.step if info is not None else 0
    # Steps this run trained itself; a start that failed before its first step (the history a new run copies from
    # the checkpoint's run included) holds nothing to protect and may simply be started again.
    trained = [row for row in read_metrics(paths.run_dir / METRICS_FILE) if row["step"] > start]
    if info is None:
        if trained or existing:
            latest = paths.latest() or (list(existing.values())[-1] if existing else None)
            hint = f" --resum_vla_path {latest}" if latest is not None else ""
            raise FileExistsError(
                f"{paths.run_dir} already holds a run: resume it (--resume True{hint}) or start another one "
                "(--run_id_note NOTE or --run_id_override NAME)"
            )
        return
    if info.run_id != paths.run_id:
        if trained or existing:
            raise FileExistsError(
                f"{paths.run_dir} already holds another run (the checkpoint belongs to {info.run_id}): continue as a "
                "new run with another --run_id_note / --run_id_override"
            )
        return
    later = {step: path for step, path in existing.items() if step > info.step}
    if later:
        names = ", ".join(path.name for path in later.values())
        newest = list(later.values())[-1]
        raise FileExistsError(
            f"run {paths.run_id} already has checkpoints after step {info.step} ({names}); resuming from step "
            f"{info.step} would replace them. Resume from the newest (--resum_vla_path {newest}), or continue from "
            f"step {info.step} as a new run with --run_id_note NOTE (or --run_id_override NAME)"
        )


def check_warm_start(cfg: FinetuneConfig) -> PolicyFolder:
    """Read the `--init_from` folder (manifest, head, base VLM) and refuse flags its weights contradict."""
    assert cfg.init_from is not None
    try:
        found = inspect_policy_folder(cfg.init_from, cfg.num_images_in_input)
    except FileNotFoundError as err:
        adapter_only = (Path(cfg.init_from) / "lora_adapter").is_dir()
        hint = (
            " (its LoRA adapter needs that base VLM: merge it first with `python vla-scripts/merge_lora_weights.py "
            "--checkpoint_dir DIR --base_vlm_path VLM` and start from the merged folder)"
            if adapter_only and "needs its base VLM" in str(err)
            else ""
        )
        raise FileNotFoundError(f"--init_from {cfg.init_from}: {err}{hint}") from err
    spec, robot = found.spec, robot_constants(cfg.dataset_name)
    contradictions = [
        (cfg.use_pro_version, spec.use_pro_version, f"--use_pro_version {spec.use_pro_version}", "head kind"),
        (cfg.use_proprio, spec.use_proprio, f"--use_proprio {spec.use_proprio}", "proprio projector"),
        (robot.action_dim, spec.action_dim, f"a dataset with {spec.action_dim}-dim actions", "action size"),
    ]
    for wanted, held, fix, what in contradictions:
        if wanted != held:
            raise UserInputError(
                f"--init_from {cfg.init_from}: its weights fix the {what} ({held}), this run asks for {wanted}: pass "
                f"{fix} (a warm start keeps the structure of the weights it starts from)"
            )
    return found


def warm_start_message(cfg: FinetuneConfig, found: PolicyFolder) -> str:
    exact = "" if (found.folder / TRAINING_STATE).is_file() else f" ({found.folder} has no {TRAINING_STATE})"
    return (
        f"warm start from {found.folder}: its {found.weights_kind}, action head"
        + (", proprio projector" if found.spec.use_proprio else "")
        + f" and action queries{' (LoRA from scratch on top)' if cfg.use_lora else ''}; a new run with a fresh "
        f"optimizer and learning-rate schedule, steps counted from 0 to --max_steps {cfg.max_steps}, not an exact "
        f"resume{exact}"
    )
