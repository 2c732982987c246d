"""The training loop behind `vla-scripts/finetune.py`, baseline and CRaFT, readable in one sitting.

One optimizer step = `grad_accumulation_steps` micro-batches of `batch_size` samples on each process. Logging, the LR
schedule and checkpoints advance once per optimizer step. Gradients of every trainable module (VLM adapters, action
queries, action head, proprio projector) are averaged over processes: by DDP for baseline steps, by CRaFT's single
all-reduce of both gradients for CRaFT steps (and for a baseline's periodic CRaFT measurements).

Start-up runs the cheap checks first (flags, the checkpoint to resume from, the run folder, WandB, the dataset's
shards and statistics) so that a mistake costs seconds, not a model load. What a run saves and restores is owned by
`TrainingState` (checkpointing.py); what a resume may change is decided in resume.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from craft import CRaFTConfig, CRaFTStep, CRaFTStepStats, retention_loss
from prismatic.models.loaders import PolicySpec, load_prismatic_vlm
from prismatic.models.lora import LoRASettings, apply_lora
from prismatic.models.policy import VLAAdapterPolicy
from prismatic.models.tokenizer import load_tokenizer
from prismatic.models.vlm import PrismaticVLM
from prismatic.training import metrics as M
from prismatic.training.anchor import Anchor, retention_features
from prismatic.training.checkpointing import (
    CheckpointInfo,
    NonFiniteTrainingError,
    RunPaths,
    TrainingState,
    inspect_checkpoint,
    verify_checkpoint,
)
from prismatic.training.config import CONFIG_SNAPSHOT, FinetuneConfig, save_config_snapshot
from prismatic.training.distributed import (
    DistContext,
    all_reduce_mean,
    barrier,
    init_distributed,
    on_main,
    seed_everything,
    shutdown_distributed,
)
from prismatic.training.metrics import MetricsSinks, init_wandb
from prismatic.training.resume import FlagChange, check_destination, check_resume
from prismatic.training.schedule import LRSchedule
from prismatic.training.update_guard import check_adamw_update
from prismatic.util.atomic_io import atomic_write_json
from prismatic.util.cli import USER_ERRORS
from prismatic.vla.constants import IGNORE_INDEX
from prismatic.vla.datasets import PaddedCollatorForActionPrediction, RLDSBatchTransform, RLDSDataset
from prismatic.vla.datasets.registry import robot_constants
from prismatic.vla.datasets.rlds.statistics import save_dataset_statistics

__all__ = ["NonFiniteTrainingError", "train"]

log = logging.getLogger(__name__)


def noise_seed(seed: int, step: int, micro: int) -> int:
    """Seed of the action head's training noise for one micro-batch (same on every process and after resume)."""
    digest = hashlib.sha256(f"{seed}/{step}/{micro}".encode()).hexdigest()
    return int(digest[:15], 16)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------------------------
# setup
# ---------------------------------------------------------------------------------------------------------------
def trainable_vlm(vlm: PrismaticVLM, use_lora: bool, lora_rank: int, lora_dropout: float) -> torch.nn.Module:
    """LoRA-wrap the VLM, or (full fine-tuning) train every parameter a forward reaches."""
    if use_lora:
        return apply_lora(vlm, LoRASettings(rank=lora_rank, dropout=lora_dropout))
    unused = set(vlm.unused_parameter_names())
    for name, param in vlm.named_parameters():
        param.requires_grad_(name not in unused)
    return vlm


def build_policy(cfg: FinetuneConfig) -> tuple[VLAAdapterPolicy, PolicySpec]:
    robot = robot_constants(cfg.dataset_name)
    vlm = load_prismatic_vlm(
        cfg.vlm_path, num_images=cfg.num_images_in_input, vision_weights_dir=cfg.vision_weights_dir
    )
    vlm_module = trainable_vlm(vlm, cfg.use_lora, cfg.lora_rank, cfg.lora_dropout)
    policy = VLAAdapterPolicy(vlm_module, robot, use_pro_version=cfg.use_pro_version, use_proprio=cfg.use_proprio)
    spec = PolicySpec(
        num_images_in_input=cfg.num_images_in_input,
        use_proprio=cfg.use_proprio,
        use_pro_version=cfg.use_pro_version,
        action_chunk=robot.action_chunk,
        action_dim=robot.action_dim,
        proprio_dim=robot.proprio_dim,
        normalization=robot.normalization.value,
        dataset_name=cfg.dataset_name,
        base_vlm_path=str(Path(cfg.vlm_path).resolve()),
        lora={"rank": cfg.lora_rank, "dropout": cfg.lora_dropout} if cfg.use_lora else None,
    )
    return policy, spec


def build_data(
    cfg: FinetuneConfig, ctx: DistContext, tokenizer: Any, start_step: int, statistics: dict[str, Any] | None
) -> tuple[RLDSDataset, Iterator[dict[str, Any]]]:
    dataset = RLDSDataset(
        cfg.data_root_dir,
        cfg.dataset_name,
        RLDSBatchTransform(tokenizer),
        shuffle_buffer_size=cfg.shuffle_buffer_size,
        train=True,
        image_aug=cfg.image_aug,
        num_images=cfg.num_images_in_input,
        shuffle_buffer_ram_gb=cfg.shuffle_buffer_ram_gb,
        seed=cfg.seed,
        rank=ctx.rank,
        world_size=ctx.world_size,
        sharding=cfg.data_sharding,
        start_sample=start_step * cfg.batch_size * cfg.grad_accumulation_steps,
        n_shot_episodes=cfg.n_shot_episodes,
        heldout_episode_fraction=cfg.heldout_episode_fraction,
        statistics=statistics,
    )
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        num_workers=0,
        collate_fn=PaddedCollatorForActionPrediction(tokenizer.pad_token_id),
    )
    return dataset, iter(loader)


# ---------------------------------------------------------------------------------------------------------------
# one optimizer step's gradients
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class GradientStepper:
    """Everything needed to turn one step's micro-batches into `param.grad` (baseline or CRaFT)."""

    model: torch.nn.Module  # the policy, or its DDP wrapper
    anchor: Anchor | None
    craft_step: CRaFTStep | None
    craft_cfg: CRaFTConfig
    accum: int
    seed: int
    use_proprio: bool
    ctx: DistContext

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.ctx.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def compute_gradients(
    s: GradientStepper, batches: Iterator[dict[str, Any]], step: int, measure: bool
) -> tuple[torch.Tensor, CRaFTStepStats | None, float]:
    """Run the step's micro-batches; returns (mean [loss, current L1, next L1] of this process, CRaFT stats or None,
    seconds spent waiting for data). Baseline micro-batches backpropagate loss / K (DDP averages over processes on
    the last one); CRaFT micro-batches (or a baseline's measurement steps) go through `CRaFTStep`, which averages both
    gradients over micro-batches and processes in one all-reduce."""
    is_ddp = isinstance(s.model, DistributedDataParallel)
    losses = torch.zeros(3, device=s.ctx.device)
    data_wait = 0.0
    for micro in range(s.accum):
        wait_start = time.perf_counter()
        batch = _to_device(next(batches), s.ctx.device)
        data_wait += time.perf_counter() - wait_start
        defer_sync = is_ddp and (measure or micro < s.accum - 1)
        with s.model.no_sync() if defer_sync else contextlib.nullcontext():  # type: ignore[operator]
            with s.autocast():
                out = s.model(
                    pixel_values=batch["pixel_values"],
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    labels=batch["labels"],
                    proprio=batch["proprio"] if s.use_proprio else None,
                    noise_seed=noise_seed(s.seed, step, micro),
                )
            l1 = (out.actions.float() - batch["actions"]).abs()
            loss = l1.mean()
            losses += torch.stack([loss.detach(), l1[:, 0].mean().detach(), l1[:, 1:].mean().detach()])
            if measure:
                assert s.anchor is not None and s.craft_step is not None
                with s.autocast():
                    feats = retention_features(out.vlm, s.craft_cfg, s.anchor.num_layers)
                    anchor_feats = s.anchor.features(
                        batch["pixel_values"],
                        batch["input_ids"],
                        batch["attention_mask"],
                        batch["labels"] != IGNORE_INDEX,
                    )
                s.craft_step.accumulate(loss, retention_loss(feats, anchor_feats))
            else:
                (loss / s.accum).backward()
    stats = s.craft_step.finish(sync=s.ctx.distributed) if measure and s.craft_step is not None else None
    return losses / s.accum, stats, data_wait


# ---------------------------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------------------------
def train(cfg: FinetuneConfig) -> Path:
    """Run a fine-tune; returns the run directory."""
    ctx = init_distributed()
    try:
        return _train(cfg, ctx)
    finally:
        shutdown_distributed()


def start_checks(cfg: FinetuneConfig, ctx: DistContext) -> tuple[RunPaths, CheckpointInfo | None, list[FlagChange]]:
    """Everything knowable before data or model: flags, the checkpoint to resume from, and where the run writes."""
    cfg.validate()
    info, changes = None, []
    if cfg.resume:
        assert cfg.resum_vla_path is not None
        on_main(lambda: verify_checkpoint(cfg.resum_vla_path), ctx, USER_ERRORS)  # hashes every file once
        info = inspect_checkpoint(cfg.resum_vla_path)
        changes = check_resume(cfg, info, ctx.world_size)
    paths = RunPaths(Path(cfg.run_root_dir), cfg.run_id())
    on_main(lambda: check_destination(paths, info), ctx, USER_ERRORS)
    return paths, info, changes


def _train(cfg: FinetuneConfig, ctx: DistContext) -> Path:
    paths, info, changes = start_checks(cfg, ctx)
    start_step = info.step if info is not None else 0
    run_dir = paths.run_dir
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        paths.clean_staging_leftovers()
    barrier(ctx)
    sinks = MetricsSinks(
        run_dir, ctx.is_main, cfg.console_log_freq, cfg.wandb_log_freq, cfg.max_steps, cfg.craft_retention_budget
    )
    if cfg.use_wandb:  # before anything heavy: a missing login fails in seconds, on every process

        def start_wandb() -> None:
            config = {k: str(v) for k, v in asdict(cfg).items()}
            sinks.wandb_run = init_wandb(cfg.wandb_settings(run_dir), paths.run_id, config)

        on_main(start_wandb, ctx, USER_ERRORS)
    branched_from = info.folder.parent / info.run_id if info is not None and info.run_id != paths.run_id else None
    sinks.open(start_step, history_from=branched_from)
    if changes:
        sinks.message(f"resuming with changed flags: {', '.join(map(str, changes))}", step=start_step)

    # Data before the model: a bad dataset (missing shard, wrong statistics) fails in seconds.
    tokenizer = load_tokenizer(cfg.config_file_path)
    dataset, batches = build_data(cfg, ctx, tokenizer, start_step, info.statistics if info is not None else None)
    statistics = dataset.dataset_statistics
    if ctx.is_main:
        save_config_snapshot(cfg, run_dir / CONFIG_SNAPSHOT)
        save_dataset_statistics(run_dir, statistics)
        atomic_write_json(run_dir / "episodes.json", dataset.info.manifest)

    # Model: identical initialisation on every process, then the checkpoint's state when resuming.
    seed_everything(cfg.seed)
    policy, spec = build_policy(cfg)
    craft_cfg = cfg.craft_config()
    use_craft_machinery = cfg.use_craft or cfg.craft_measure_freq > 0
    anchor = Anchor(policy.vlm, craft_cfg) if use_craft_machinery else None  # theta_0, before any restore
    if cfg.gradient_checkpointing:
        policy.base_vlm.enable_gradient_checkpointing()
    policy.to(ctx.device).train()
    if anchor is not None and anchor.frozen_copy:
        anchor.vlm.to(ctx.device)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay
    )
    schedule = LRSchedule(cfg.learning_rate, cfg.lr_warmup_steps, cfg.num_steps_before_decay)
    craft_step = CRaFTStep(trainable, craft_cfg, measure_only=not cfg.use_craft) if use_craft_machinery else None
    state = TrainingState(paths, cfg, ctx, policy, spec, optimizer, schedule, craft_step, statistics)
    if info is not None:
        state.restore(info)

    model: torch.nn.Module = policy
    if ctx.distributed:
        device_ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
        model = DistributedDataParallel(policy, device_ids=device_ids, find_unused_parameters=False)

    if ctx.is_main:
        trainable_count = sum(p.numel() for p in trainable)
        sinks.message(
            f"run {paths.run_id}: {'CRaFT' if cfg.use_craft else 'baseline'}, {ctx.world_size} process(es) on "
            f"{ctx.device.type}, global batch {cfg.batch_size * ctx.world_size * cfg.grad_accumulation_steps}, "
            f"{trainable_count:,} trainable parameters, {len(dataset):,} transitions"
            + (f", resuming at step {start_step}" if start_step else "")
        )

    accum = cfg.grad_accumulation_steps
    stepper = GradientStepper(model, anchor, craft_step, craft_cfg, accum, cfg.seed, cfg.use_proprio, ctx)
    counters = state.counters
    progress = tqdm(
        range(start_step + 1, cfg.max_steps + 1),
        initial=start_step,
        total=cfg.max_steps,
        disable=not ctx.is_main,
        desc="finetune",
        dynamic_ncols=True,
    )
    for step in progress:
        step_start = time.perf_counter()
        measure = cfg.use_craft or (cfg.craft_measure_freq > 0 and step % cfg.craft_measure_freq == 0)
        dual_before = craft_step.dual.state_dict() if craft_step is not None else None
        losses, craft_stats, data_wait = compute_gradients(stepper, batches, step, measure)

        # Clip / measure the (already averaged over processes) gradient, then look at the update before making it:
        # a non-finite loss or gradient, or an update out of all proportion to the weights, is skipped.
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_norm)
        means = all_reduce_mean(losses, ctx)
        lr = schedule.apply(optimizer, step - 1)
        skip_reason = None
        update_ratio = float("nan")
        if not bool(torch.isfinite(means[0]) and torch.isfinite(grad_norm)):
            skip_reason = "non-finite loss or gradient"
        else:
            update = check_adamw_update(optimizer)
            update_ratio = update.ratio
            if not update.acceptable(cfg.max_update_ratio):
                skip_reason = (
                    f"the update would move the weights by {update.ratio:.3g} x their norm (limit --max_update_ratio "
                    f"{cfg.max_update_ratio})"
                    if update.finite
                    else "the update would make the weights non-finite"
                )
        if skip_reason is None:
            optimizer.step()
            counters["consecutive_nonfinite"] = 0
        else:
            if craft_step is not None and dual_before is not None:
                craft_step.dual.load_state_dict(dual_before)  # a skipped step does not move lambda either
            counters["skipped_steps"] += 1
            counters["consecutive_nonfinite"] += 1
            sinks.message(f"{skip_reason}, update skipped ({counters['consecutive_nonfinite']} in a row)", step=step)
        optimizer.zero_grad(set_to_none=True)

        elapsed = time.perf_counter() - step_start
        metrics = {
            M.LOSS: float(means[0]),
            M.CURR_L1: float(means[1]),
            M.NEXT_L1: float(means[2]),
            M.GRAD_NORM: float(grad_norm),
            M.LR: lr,
            M.UPDATE_RATIO: update_ratio,
            M.SAMPLES_PER_S: cfg.batch_size * accum * ctx.world_size / elapsed,
            M.DATA_WAIT: data_wait / elapsed,
            M.SKIPPED: float(counters["skipped_steps"]),
            **M.peak_memory_gb(ctx.device.type),
        }
        if craft_stats is not None:
            metrics.update(craft_stats.to_metrics())
            if skip_reason is not None:  # lambda was restored with the skipped update
                metrics[M.LAMBDA] = metrics[M.LAMBDA_AFTER] = craft_stats.lambda_before
        sinks.log(step, metrics)
        if ctx.is_main:
            progress.set_postfix(loss=f"{metrics[M.LOSS]:.4f}", refresh=False)

        if counters["consecutive_nonfinite"] >= cfg.max_nonfinite_steps:
            sinks.close()
            raise NonFiniteTrainingError(
                f"{counters['consecutive_nonfinite']} consecutive steps were skipped (last: step {step}, "
                f"{skip_reason}); lower --learning_rate, set --max_grad_norm, or check the data"
            )
        if step % cfg.save_freq == 0 or step == cfg.max_steps:
            folder = state.save(step)
            sinks.message(f"saved checkpoint {folder}", step=step)
    progress.close()
    sinks.close()
    return run_dir
