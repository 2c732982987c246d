"""`FinetuneConfig`: every flag of `vla-scripts/finetune.py`, validated before any expensive work.

Flag names follow the user's guide and the reference scripts (`--resum_vla_path` included, spelled as there).
On resume, the configuration saved with the checkpoint is the base and the flags given on the command line
override it, so `--resume True --resume_step N --resum_vla_path DIR` alone continues a run.
"""

from __future__ import annotations

import argparse
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import draccus

from craft import CRaFTConfig
from prismatic.util.atomic_io import atomic_write_text

CONFIG_SNAPSHOT = "finetune_config.yaml"


@dataclass
class FinetuneConfig:
    # fmt: off
    # -- model ----------------------------------------------------------------------------------------------------
    vlm_path: Path = Path("pretrained_models/prism-qwen25-extra-dinosiglip-224px-0_5b")  # Prismatic VLM folder
    config_file_path: Path = Path("pretrained_models/configs")  # config bundle (tokenizer, processor, model config)
    use_l1_regression: bool = True          # continuous actions, L1 loss (the only supported action head)
    use_diffusion: bool = False             # not supported (CRaFT supports only L1 regression)
    use_pro_version: bool = True            # VLA-Adapter-Pro Bridge-Attention head
    use_proprio: bool = True                # proprio token in the action head
    num_images_in_input: int = 2            # 1 = third-person camera, 2 = + wrist camera
    use_lora: bool = True
    lora_rank: int = 64                     # alpha = 2 x rank
    lora_dropout: float = 0.0
    gradient_checkpointing: bool = False    # recompute activations (LLM and ViTs): less memory, more compute
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
    heldout_episode_fraction: float = 0.05  # episodes kept out of training (reference: first 95 percent)

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
    seed: int = 7

    # -- CRaFT ----------------------------------------------------------------------------------------------------
    use_craft: bool = False
    craft_retention_budget: float = 0.1
    craft_dual_lr: float = 0.01
    craft_enable_projection: bool = True
    craft_enable_dual: bool = True
    craft_fixed_lambda: float = 0.1
    craft_initial_lambda: float = 0.0
    craft_anchor_type: str = "concat"       # concat | aq_only | raw_only
    craft_anchor_layer_idx: int | None = None  # None = middle layer; negative = from the end
    craft_cr_token_mode: str = "vision_only"   # vision_only | vision_plus_prompt
    craft_projection_delta: float = 1e-8
    craft_measure_freq: int = 0             # baseline runs: measure CRaFT diagnostics every N steps (0 = never)

    # -- logging --------------------------------------------------------------------------------------------------
    run_root_dir: Path = Path("runs")
    run_id_note: str | None = None
    run_id_override: str | None = None
    console_log_freq: int = 10
    use_wandb: bool = False
    wandb_project: str = "vla-adapter-craft"
    wandb_entity: str | None = None
    wandb_mode: str = "online"              # online | offline
    wandb_log_freq: int = 10

    # -- checkpoints and resume -----------------------------------------------------------------------------------
    save_freq: int = 5_000
    save_latest_checkpoint_only: bool = False
    merge_lora_during_training: bool = False  # also write merged model.safetensors in each checkpoint (rank 0)
    resume: bool = False
    resume_step: int | None = None
    resum_vla_path: Path | None = None      # checkpoint folder to resume from (spelled as in the reference)
    allow_resume_config_change: bool = False  # resume with another world size / batch / accumulation (warns)
    # fmt: on

    # ---------------------------------------------------------------------------------------------------------------
    def craft_config(self) -> CRaFTConfig:
        return CRaFTConfig(
            retention_budget=self.craft_retention_budget,
            dual_lr=self.craft_dual_lr,
            enable_projection=self.craft_enable_projection,
            enable_dual=self.craft_enable_dual,
            fixed_lambda=self.craft_fixed_lambda,
            initial_lambda=self.craft_initial_lambda,
            anchor_type=self.craft_anchor_type,
            anchor_layer_idx=self.craft_anchor_layer_idx,
            cr_token_mode=self.craft_cr_token_mode,
            projection_delta=self.craft_projection_delta,
        )

    def run_id(self) -> str:
        if self.run_id_override:
            return self.run_id_override
        parts = [
            Path(self.vlm_path).name,
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

    def validate(self) -> None:
        """Reject bad values with the flag name and the fix, before any model or data is loaded."""
        if self.use_diffusion:
            raise ValueError(
                "--use_diffusion True is not supported: this trainer (and CRaFT) supports only continuous actions "
                "with L1 regression (--use_l1_regression True --use_diffusion False)"
            )
        if not self.use_l1_regression:
            raise ValueError("--use_l1_regression False is not supported: discrete action tokens are not implemented")
        positive = {
            "--batch_size": self.batch_size,
            "--grad_accumulation_steps": self.grad_accumulation_steps,
            "--max_steps": self.max_steps,
            "--save_freq": self.save_freq,
            "--console_log_freq": self.console_log_freq,
            "--wandb_log_freq": self.wandb_log_freq,
            "--lora_rank": self.lora_rank,
            "--max_nonfinite_steps": self.max_nonfinite_steps,
            "--num_steps_before_decay": self.num_steps_before_decay,
            "--shuffle_buffer_size": self.shuffle_buffer_size,
        }
        for flag, value in positive.items():
            if value < 1:
                raise ValueError(f"{flag} must be >= 1 (got {value})")
        if not self.learning_rate > 0:
            raise ValueError(f"--learning_rate must be > 0 (got {self.learning_rate})")
        if self.lr_warmup_steps < 0:
            raise ValueError(f"--lr_warmup_steps must be >= 0 (got {self.lr_warmup_steps})")
        if self.num_images_in_input not in (1, 2):
            raise ValueError(f"--num_images_in_input must be 1 or 2 for LIBERO (got {self.num_images_in_input})")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"--max_grad_norm must be > 0 or None (got {self.max_grad_norm})")
        if self.craft_measure_freq < 0:
            raise ValueError(f"--craft_measure_freq must be >= 0 (got {self.craft_measure_freq})")
        if self.data_sharding not in ("episodes", "samples"):
            raise ValueError(f"--data_sharding must be episodes or samples (got {self.data_sharding!r})")
        if self.wandb_mode not in ("online", "offline"):
            raise ValueError(f"--wandb_mode must be online or offline (got {self.wandb_mode!r})")
        if self.run_id_override is not None and not re.fullmatch(r"[\w.+=-]+", self.run_id_override):
            raise ValueError(f"--run_id_override {self.run_id_override!r}: use letters, digits and . _ - + = only")
        self.craft_config().validate()
        self._validate_paths()
        if self.resume:
            if self.resum_vla_path is None:
                raise ValueError("--resume True needs --resum_vla_path pointing at a checkpoint folder")
            if not (Path(self.resum_vla_path) / "training_state.pt").is_file():
                raise FileNotFoundError(
                    f"--resum_vla_path {self.resum_vla_path}: no training_state.pt there (not a checkpoint of this "
                    "trainer, or an interrupted save)"
                )

    def _validate_paths(self) -> None:
        vlm = Path(self.vlm_path)
        if not (vlm / "config.json").is_file() or not (vlm / "checkpoints").is_dir():
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


def load_config_snapshot(path: Path) -> dict[str, Any]:
    """The flags a checkpoint was trained with (its `finetune_config.yaml`)."""
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def parse_finetune_config(argv: list[str]) -> FinetuneConfig:
    """Parse the command line; with `--resume True`, defaults come from the checkpoint's saved configuration."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--resume", default="False")
    pre.add_argument("--resum_vla_path", default=None)
    known, _ = pre.parse_known_args(argv)
    config_path = None
    if str(known.resume).lower() in ("true", "1", "yes") and known.resum_vla_path:
        snapshot = Path(known.resum_vla_path) / CONFIG_SNAPSHOT
        if snapshot.is_file():
            config_path = str(snapshot)
    return draccus.parse(config_class=FinetuneConfig, config_path=config_path, args=argv)


def save_config_snapshot(cfg: FinetuneConfig, path: Path) -> None:
    """Write the full configuration as YAML (what `parse_finetune_config` reads back on resume)."""
    buffer = io.StringIO()
    draccus.dump(cfg, buffer)
    atomic_write_text(path, buffer.getvalue())
