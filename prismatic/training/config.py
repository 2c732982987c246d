"""`FinetuneConfig`: every flag of `vla-scripts/finetune.py`, validated before any expensive work.

Flag names follow the user's guide and the reference scripts (`--resum_vla_path` included, spelled as there).
On resume, the configuration saved with the checkpoint is the base and the flags given on the command line
override it, so `--resume True --resume_step N --resum_vla_path DIR` alone continues a run (and a flag that would
change the run is refused unless allowed: see `prismatic/training/resume.py`).

A warm start (`--init_from DIR`) begins a new run from a policy folder's weights with a fresh optimizer and
schedule. VLA-Adapter's `--resume True --resum_vla_path DIR` on a folder without `training_state.pt` (a released
model) means exactly that there, so it is turned into `--init_from DIR` here.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import draccus
import yaml

from craft import CRaFTConfig, CRaFTConfigError
from prismatic.models.loaders import component_step
from prismatic.models.precision import BASE_PRECISIONS, MERGED_DTYPES
from prismatic.util.atomic_io import atomic_write_text
from prismatic.util.checkpoint_io import verify_manifest
from prismatic.util.cli import UserInputError, check_finite_floats, parse_cli
from prismatic.util.wandb_settings import WandbSettings, resolve_wandb_settings
from prismatic.vla.datasets.registry import resolve_mixture
from prismatic.vla.datasets.rlds.stream import StreamConfig

CONFIG_SNAPSHOT = "finetune_config.yaml"
TRAINING_STATE = "training_state.pt"  # what makes a folder an exactly resumable checkpoint of this trainer
CRAFT_DEFAULTS = CRaFTConfig()
CRAFT_FLAG_PREFIX = "craft_"


@dataclass
class FinetuneConfig:
    # fmt: off
    # -- model ----------------------------------------------------------------------------------------------------
    vlm_path: Path = Path("pretrained_models/prism-qwen25-extra-dinosiglip-224px-0_5b")  # Prismatic VLM folder
    config_file_path: Path = Path("pretrained_models/configs")  # config bundle (tokenizer, processor, model config)
    use_l1_regression: bool = True          # continuous actions, L1 loss (the only supported action head)
    use_diffusion: bool = False             # not supported (CRaFT supports only L1 regression)
    # VLA-Adapter's own model flags, accepted so that its commands run unchanged (see `reference_flag_errors`)
    use_minivlm: bool = True                # the Qwen2.5-0.5B Prismatic VLM at --vlm_path (the only backbone here)
    use_film: bool = False                  # FiLM conditioning: not implemented
    use_fz: bool = False                    # VLA-Adapter: save the whole model, not an adapter (= --use_lora False)
    phase: str = "Training"
    phase1_path: str = "None"               # unused, as in VLA-Adapter's trainer
    num_diffusion_steps: int = 50           # used only with --use_diffusion True (not supported)
    diffusion_sample_freq: int = 50         # used only with --use_diffusion True (not supported)
    use_pro_version: bool = True            # VLA-Adapter-Pro Bridge-Attention head
    use_proprio: bool = True                # proprio token in the action head
    num_images_in_input: int = 2            # 1 = third-person camera, 2 = + wrist camera
    use_lora: bool = True
    lora_rank: int = 64                     # alpha = 2 x rank
    lora_dropout: float = 0.0
    gradient_checkpointing: bool = False    # recompute activations (LLM and ViTs): less memory, more compute
    base_precision: str = "auto"            # frozen weights: bf16 | fp32 | auto (bf16 on CUDA, fp32 on CPU);
                                            # trainable weights and optimizer state are always fp32
    vision_weights_dir: Path | None = None  # timm ViT weights when the VLM checkpoint has none

    # -- data -----------------------------------------------------------------------------------------------------
    data_root_dir: Path = Path("data/libero")
    dataset_name: str = "libero_spatial_no_noops"
    image_aug: bool = True
    shuffle_buffer_size: int = 100_000
    shuffle_buffer_ram_gb: float = 2.0      # cap on the encoded frames held by the shuffle buffer
    n_shot_episodes: int | None = None      # K episodes per task (few-shot)
    data_sharding: str = "episodes"         # episodes: disjoint episode shards per process; samples: one global
                                            # stream split by sample (same sequence for any number of processes)
    heldout_episode_fraction: float = 0.0   # last fraction of episodes kept out of training (opt-in; 0 = train
                                            # on every episode, like VLA-Adapter and openvla-oft)
    use_val_set: bool = False               # L1 (and retention with CRaFT) on the held-out episodes, as VLA Val/*
    val_freq: int = 10_000                  # validate every this many steps (with --use_val_set True)
    val_time_limit: int = 180               # seconds per validation (main process; the others wait)

    # -- optimisation ---------------------------------------------------------------------------------------------
    batch_size: int = 8                     # per process; global = batch_size x processes x grad_accumulation_steps
    grad_accumulation_steps: int = 1
    learning_rate: float = 5e-4
    lr_warmup_steps: int = 0                # linear warmup from 10 to 100 percent of the learning rate
    num_steps_before_decay: int = 100_000   # learning rate x 0.1 after this many steps
    max_steps: int = 20_000                 # optimizer steps
    weight_decay: float = 0.01
    max_grad_norm: float | None = None      # clip the global gradient norm (None: no clipping, as the reference)
    max_nonfinite_steps: int = 10           # abort after this many consecutive skipped (non-finite) steps
    max_update_ratio: float | None = 1.0    # skip an update larger than this x the weights' norm (None: no limit)
    seed: int = 7

    # -- CRaFT: `--craft_<field>` for every field of craft.CRaFTConfig, its defaults (a test checks the mapping) ----
    use_craft: bool = False
    craft_retention_budget: float = CRAFT_DEFAULTS.retention_budget   # epsilon, the allowed drift L_ret
    craft_dual_lr: float = CRAFT_DEFAULTS.dual_lr                     # eta, the dual ascent step
    craft_enable_projection: bool = CRAFT_DEFAULTS.enable_projection  # conflict-aware gradient projection
    craft_enable_dual: bool = CRAFT_DEFAULTS.enable_dual              # adaptive lambda (False: fixed lambda)
    craft_fixed_lambda: float = CRAFT_DEFAULTS.fixed_lambda           # lambda when the dual update is off
    craft_initial_lambda: float = CRAFT_DEFAULTS.initial_lambda
    craft_anchor_type: str = CRAFT_DEFAULTS.anchor_type               # concat | aq_only | raw_only
    craft_anchor_layer_idx: int | None = CRAFT_DEFAULTS.anchor_layer_idx  # None = middle layer; negative = from end
    craft_cr_token_mode: str = CRAFT_DEFAULTS.cr_token_mode           # vision_only | vision_plus_prompt
    craft_projection_delta: float = CRAFT_DEFAULTS.projection_delta
    # cheaper, opt-in: L_ret from this fraction of each micro-batch (unbiased; 1.0 = exact), each frame's anchor
    # features computed once (exact; needs --image_aug False), and no retention gradient on steps where the constraint
    # is slack (lambda = 0, previous L_ret <= margin x epsilon; 0 = exact)
    craft_retention_fraction: float = CRAFT_DEFAULTS.retention_fraction
    craft_cache_anchor_features: bool = CRAFT_DEFAULTS.cache_anchor_features
    craft_slack_margin: float = CRAFT_DEFAULTS.slack_margin
    craft_measure_freq: int = 0             # baseline runs: measure CRaFT diagnostics every N steps (0 = never)

    # -- logging --------------------------------------------------------------------------------------------------
    run_root_dir: Path = Path("runs")
    run_id_note: str | None = None
    run_id_override: str | None = None
    console_log_freq: int = 10
    use_wandb: bool = False
    wandb_project: str | None = None        # None: $WANDB_PROJECT, else vla-adapter-craft
    wandb_entity: str | None = None         # None: $WANDB_ENTITY, else your default entity
    wandb_mode: str | None = None           # online | offline | disabled; None: $WANDB_MODE, else online
    wandb_log_freq: int = 10

    # -- checkpoints and resume -----------------------------------------------------------------------------------
    save_freq: int = 5_000
    save_latest_checkpoint_only: bool = False  # same as --keep_last_n_checkpoints 1
    keep_last_n_checkpoints: int | None = None  # None: keep all; N: delete older ones, optimizer state in the newest
    merge_lora_during_training: bool = False  # also write merged model.safetensors in each checkpoint (rank 0)
    merged_dtype: str = "bf16"              # dtype of merged LoRA weights (bf16 like the released checkpoints | fp32)
    resume: bool = False
    resume_step: int | None = None
    resum_vla_path: Path | None = None      # checkpoint folder to resume from (spelled as in the reference)
    init_from: Path | None = None           # warm start: a new run from a policy folder's weights (released or
                                            # ours), fresh optimizer and schedule
    allow_resume_config_change: bool = False  # apply changed flags on resume (each change is logged)
    # fmt: on

    # ---------------------------------------------------------------------------------------------------------------
    def craft_config(self) -> CRaFTConfig:
        """The `--craft_*` flags as a `CRaFTConfig`; a bad value is reported with its flag name."""
        try:
            return CRaFTConfig(
                **{
                    field.name: getattr(self, CRAFT_FLAG_PREFIX + field.name)
                    for field in dataclasses.fields(CRaFTConfig)
                }
            )
        except CRaFTConfigError as err:
            raise craft_flag_error(err) from err

    def stream_config(
        self, rank: int = 0, world_size: int = 1, start_step: int = 0, statistics: dict[str, Any] | None = None
    ) -> StreamConfig:
        """This process's training stream, positioned after the samples of `start_step` optimizer steps."""
        return StreamConfig(
            data_root_dir=Path(self.data_root_dir),
            dataset_name=self.dataset_name,
            num_images=self.num_images_in_input,
            train=True,
            image_aug=self.image_aug,
            shuffle_buffer_size=self.shuffle_buffer_size,
            shuffle_buffer_ram_gb=self.shuffle_buffer_ram_gb,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
            sharding=self.data_sharding,
            start_sample=start_step * self.batch_size * self.grad_accumulation_steps,
            n_shot_episodes=self.n_shot_episodes,
            heldout_episode_fraction=self.heldout_episode_fraction,
            statistics=statistics,
        )

    def run_id(self) -> str:
        """`--run_id_override`, or a name built from the main flags; `--run_id_note` is appended to either."""
        if self.run_id_override:
            run_id = self.run_id_override
        else:
            parts = [
                f"from-{Path(self.init_from).name}" if self.init_from is not None else Path(self.vlm_path).name,
                self.dataset_name,
                f"b{self.batch_size * self.grad_accumulation_steps}",
                f"lr-{self.learning_rate:g}",
            ]
            if self.use_lora:
                parts.append(f"lora-r{self.lora_rank}+dropout-{self.lora_dropout:g}")
            if self.n_shot_episodes:
                parts.append(f"{self.n_shot_episodes}shot")
            parts.append("craft" if self.use_craft else "baseline")
            parts.append(f"seed{self.seed}")
            run_id = "+".join(parts)
        return f"{run_id}--{self.run_id_note}" if self.run_id_note else run_id

    def wandb_settings(self, run_dir: Path) -> WandbSettings:
        return resolve_wandb_settings(
            self.wandb_mode, self.wandb_project, self.wandb_entity, "vla-adapter-craft", default_dir=run_dir
        )

    def checkpoints_to_keep(self) -> int | None:
        return 1 if self.save_latest_checkpoint_only else self.keep_last_n_checkpoints

    def validate(self) -> None:
        """Reject bad values with the flag name and the fix, before any model or data is loaded."""
        if self.use_diffusion:
            raise ValueError(
                "--use_diffusion True is not supported: this trainer (and CRaFT) supports only continuous actions "
                "with L1 regression (--use_l1_regression True --use_diffusion False)"
            )
        if not self.use_l1_regression:
            raise ValueError("--use_l1_regression False is not supported: discrete action tokens are not implemented")
        if errors := reference_flag_errors(self):
            raise ValueError(errors[0])
        check_finite_floats(self)
        at_least_one = {
            "--batch_size": self.batch_size,
            "--grad_accumulation_steps": self.grad_accumulation_steps,
            "--max_steps": self.max_steps,
            "--save_freq": self.save_freq,
            "--console_log_freq": self.console_log_freq,
            "--wandb_log_freq": self.wandb_log_freq,
            "--lora_rank": self.lora_rank,
            "--max_nonfinite_steps": self.max_nonfinite_steps,
            "--num_steps_before_decay": self.num_steps_before_decay,
            "--keep_last_n_checkpoints": self.keep_last_n_checkpoints,
        }
        for flag, value in at_least_one.items():
            if value is not None and value < 1:
                raise ValueError(f"{flag} must be >= 1 (got {value})")
        positive = {
            "--learning_rate": self.learning_rate,
            "--max_grad_norm": self.max_grad_norm,
            "--max_update_ratio": self.max_update_ratio,
        }
        for flag, value in positive.items():
            if value is not None and not value > 0:
                raise ValueError(f"{flag} must be > 0 (got {value})")
        for flag, value in (("--weight_decay", self.weight_decay), ("--lr_warmup_steps", self.lr_warmup_steps)):
            if value < 0:
                raise ValueError(f"{flag} must be >= 0 (got {value})")
        for flag, value, choices in (
            ("--base_precision", self.base_precision, ("auto", *BASE_PRECISIONS)),
            ("--merged_dtype", self.merged_dtype, tuple(MERGED_DTYPES)),
        ):
            if value not in choices:
                raise ValueError(f"{flag} must be one of {', '.join(choices)} (got {value!r})")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"--lora_dropout must be in [0, 1) (got {self.lora_dropout})")
        if self.num_images_in_input not in (1, 2):
            raise ValueError(f"--num_images_in_input must be 1 or 2 for LIBERO (got {self.num_images_in_input})")
        if self.craft_cache_anchor_features and self.image_aug:
            raise ValueError(
                "--craft_cache_anchor_features True needs --image_aug False: with augmentation a frame's images "
                "differ every time it is drawn, so its anchor features cannot be reused"
            )
        if self.craft_measure_freq < 0:
            raise ValueError(f"--craft_measure_freq must be >= 0 (got {self.craft_measure_freq})")
        if self.save_latest_checkpoint_only and self.keep_last_n_checkpoints not in (None, 1):
            raise ValueError(
                f"--save_latest_checkpoint_only True keeps one checkpoint but --keep_last_n_checkpoints is "
                f"{self.keep_last_n_checkpoints}: pass only one of them"
            )
        for flag, value in (("--run_id_note", self.run_id_note), ("--run_id_override", self.run_id_override)):
            if (value is not None and not re.fullmatch(r"[\w.+=-]+", value)) or value in (".", ".."):
                raise ValueError(
                    f"{flag} {value!r}: use letters, digits and . _ - + = only (it names a folder under --run_root_dir)"
                )
        if self.use_val_set:
            if self.heldout_episode_fraction == 0:
                raise ValueError(
                    "--use_val_set True validates on held-out episodes, but training uses every episode: add "
                    "--heldout_episode_fraction 0.05 (the last 5% of the episodes are then kept out of training)"
                )
            if self.val_freq < 1 or self.val_time_limit <= 0:
                raise ValueError(
                    f"--val_freq must be >= 1 and --val_time_limit > 0 (got {self.val_freq}, {self.val_time_limit})"
                )
        resolve_mixture(self.dataset_name)  # an unknown dataset fails here, with the registered names
        self.stream_config().validate()  # the data flags
        self.craft_config()  # the CRaFT flags
        self.wandb_settings(Path(self.run_root_dir))
        self._validate_paths()
        if self.resume and self.resum_vla_path is None:
            raise ValueError("--resume True needs --resum_vla_path pointing at a checkpoint folder")
        if self.resume and not Path(self.resum_vla_path).is_dir():
            raise FileNotFoundError(f"--resum_vla_path {self.resum_vla_path} is not a folder")

    def _validate_paths(self) -> None:
        if self.init_from is not None and not (Path(self.init_from) / "config.json").is_file():
            raise FileNotFoundError(
                f"--init_from {self.init_from}: expected a policy folder with config.json (a released VLA-Adapter "
                "model or a checkpoint of this trainer)"
            )
        vlm = Path(self.vlm_path)  # not read by a warm start: the VLM comes from --init_from
        if self.init_from is None and (not (vlm / "config.json").is_file() or not (vlm / "checkpoints").is_dir()):
            raise FileNotFoundError(
                f"--vlm_path {vlm}: expected a Prismatic VLM folder with config.json and checkpoints/ "
                "(the tiny one is made by `python vla-scripts/make_tiny_vlm.py`)"
            )
        bundle = Path(self.config_file_path)
        if not (bundle / "tokenizer_config.json").is_file():
            raise FileNotFoundError(
                f"--config_file_path {bundle}: no tokenizer_config.json (expected a config bundle such as "
                "pretrained_models/configs, or a checkpoint folder)"
            )
        if not Path(self.data_root_dir).is_dir():
            raise FileNotFoundError(f"--data_root_dir {self.data_root_dir} does not exist")
        if self.vision_weights_dir is not None and not Path(self.vision_weights_dir).is_dir():
            raise FileNotFoundError(f"--vision_weights_dir {self.vision_weights_dir} does not exist")


def read_config_snapshot(path: Path) -> dict[str, Any]:
    """The flags a checkpoint was trained with (its `finetune_config.yaml`), read as plain YAML data only."""
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise UserInputError(f"cannot read {path}: {' '.join(str(err).split())}") from err
    if not isinstance(content, dict):
        raise UserInputError(f"{path} is not a configuration (a YAML mapping of flags)")
    return content


def decode_config_snapshot(path: Path) -> FinetuneConfig:
    """A checkpoint's saved configuration as a `FinetuneConfig` (for comparing with the resumed run's flags)."""
    try:
        return draccus.decode(FinetuneConfig, read_config_snapshot(path))
    except draccus.utils.DecodingError as err:
        raise UserInputError(f"{path}: {' '.join(str(err).split())}") from err


def parse_finetune_config(argv: list[str]) -> FinetuneConfig:
    """Parse the command line; with `--resume True`, defaults come from the checkpoint's saved configuration."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--resume", default="False")
    pre.add_argument("--resum_vla_path", default=None)
    known, _ = pre.parse_known_args(argv)
    resuming = str(known.resume).lower() in ("true", "1", "yes") and bool(known.resum_vla_path)
    folder = Path(known.resum_vla_path or "")
    if resuming and folder.is_dir() and not (folder / TRAINING_STATE).is_file():
        return as_warm_start(parse_cli(FinetuneConfig, argv))
    snapshot = folder / CONFIG_SNAPSHOT
    if not resuming or not snapshot.is_file():
        return parse_cli(FinetuneConfig, argv)
    verify_manifest(snapshot.parent, only=[CONFIG_SNAPSHOT])
    saved = read_config_snapshot(snapshot)
    # The run continues beside its checkpoint (wherever the folder was copied to), unless told otherwise.
    saved["run_root_dir"] = str(snapshot.parent.parent)
    # Re-serialised as plain data: the saved file is never handed to a YAML loader that follows tags or includes.
    with tempfile.TemporaryDirectory() as tmp:
        defaults = Path(tmp) / CONFIG_SNAPSHOT
        defaults.write_text(yaml.safe_dump(saved))
        return parse_cli(FinetuneConfig, argv, config_path=defaults)


def as_warm_start(cfg: FinetuneConfig) -> FinetuneConfig:
    """`--resume True --resum_vla_path DIR` on a folder without `training_state.pt` (a released VLA-Adapter model,
    an exported policy) as what it means in VLA-Adapter: a new run from DIR's weights (`--init_from DIR`).
    `--resume_step`, when given, must be the step in DIR's file names."""
    folder = Path(cfg.resum_vla_path or "")
    if cfg.init_from is not None and Path(cfg.init_from).resolve() != folder.resolve():
        raise ValueError(f"--resum_vla_path {folder} and --init_from {cfg.init_from}: pass only one of them")
    steps = sorted(step for path in folder.glob("action_head--*") if (step := component_step(path)) is not None)
    if cfg.resume_step is not None and steps and cfg.resume_step not in steps:
        raise ValueError(
            f"--resume_step {cfg.resume_step}: {folder} holds the weights of step {steps[-1]} (pass --resume_step "
            f"{steps[-1]} or omit it)"
        )
    return dataclasses.replace(cfg, init_from=folder, resume=False, resum_vla_path=None, resume_step=None)


def config_snapshot_text(cfg: FinetuneConfig) -> str:
    """The full configuration as YAML (what `parse_finetune_config` reads back on resume)."""
    buffer = io.StringIO()
    draccus.dump(cfg, buffer)
    return buffer.getvalue()


def save_config_snapshot(cfg: FinetuneConfig, path: Path) -> None:
    atomic_write_text(path, config_snapshot_text(cfg))


def craft_flag_error(err: CRaFTConfigError) -> ValueError:
    """A CRaFT config error in terms of this command line (`--craft_<field>`)."""
    return ValueError(f"--{CRAFT_FLAG_PREFIX}{err.field} {err.reason}")


def reference_flag_errors(cfg: FinetuneConfig) -> list[str]:
    """VLA-Adapter flags that ask for something this trainer does not do (those matching its behaviour pass)."""
    errors = []
    if not cfg.use_minivlm:
        errors.append(
            "--use_minivlm False asks for the 7B OpenVLA backbone, which is not supported: pass --use_minivlm True "
            "(the Qwen2.5-0.5B Prismatic VLM at --vlm_path)"
        )
    if cfg.use_film:
        errors.append("--use_film True (FiLM conditioning of the vision features) is not implemented: use False")
    if cfg.use_fz and cfg.use_lora:
        errors.append(
            "--use_fz True saves the whole model instead of a LoRA adapter: fine-tune fully with --use_lora False "
            "(checkpoints then hold model.safetensors), or keep LoRA with --use_fz False"
        )
    if cfg.phase != "Training":
        errors.append(f"--phase {cfg.phase!r}: this script only trains (--phase Training)")
    return errors
