"""The training loop behind `vla-scripts/finetune.py`, baseline and CRaFT, readable in one sitting.

One optimizer step = `grad_accumulation_steps` micro-batches of `batch_size` samples on each process. Logging, the LR
schedule and checkpoints advance once per optimizer step. Gradients of every trainable module (VLM adapters, action
queries, action head, proprio projector) are averaged over processes: by DDP for baseline steps, by CRaFT's single
all-reduce of both gradients for CRaFT steps (and for a baseline's periodic CRaFT measurements).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
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
    LATEST_POINTER,
    checkpoint_path,
    load_training_state,
    prune_checkpoints,
    restore_trainable_weights,
    save_checkpoint,
    update_latest_pointer,
)
from prismatic.training.config import CONFIG_SNAPSHOT, FinetuneConfig, save_config_snapshot
from prismatic.training.distributed import (
    DistContext,
    all_reduce_mean,
    barrier,
    gather_objects,
    init_distributed,
    rng_state,
    seed_everything,
    set_rng_state,
    shutdown_distributed,
)
from prismatic.training.metrics import MetricsSinks, init_wandb
from prismatic.training.schedule import make_scheduler
from prismatic.util.atomic_io import atomic_write_json
from prismatic.vla.constants import IGNORE_INDEX
from prismatic.vla.datasets import PaddedCollatorForActionPrediction, RLDSBatchTransform, RLDSDataset
from prismatic.vla.datasets.registry import robot_constants
from prismatic.vla.datasets.rlds.statistics import save_dataset_statistics

log = logging.getLogger(__name__)


class NonFiniteTrainingError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


def noise_seed(seed: int, step: int, micro: int) -> int:
    """Seed of the action head's training noise for one micro-batch (same on every process and after resume)."""
    digest = hashlib.sha256(f"{seed}/{step}/{micro}".encode()).hexdigest()
    return int(digest[:15], 16)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------------------------
# setup
# ---------------------------------------------------------------------------------------------------------------
def check_resume(cfg: FinetuneConfig, ctx: DistContext) -> dict[str, Any] | None:
    """Read and cross-check the checkpoint to resume from (before anything expensive is built)."""
    if not cfg.resume:
        return None
    assert cfg.resum_vla_path is not None
    state = load_training_state(cfg.resum_vla_path)
    step = int(state["step"])
    if cfg.resume_step is not None and cfg.resume_step != step:
        raise ValueError(
            f"--resume_step {cfg.resume_step} does not match {cfg.resum_vla_path}, which holds step {step}: "
            f"pass --resume_step {step} (or point --resum_vla_path at the step-{cfg.resume_step} checkpoint)"
        )
    if step >= cfg.max_steps:
        raise ValueError(f"the checkpoint is at step {step} and --max_steps is {cfg.max_steps}: raise --max_steps")
    data = state["data"]
    changed = {
        name: (data[name], now)
        for name, now in (
            ("world_size", ctx.world_size),
            ("batch_size", cfg.batch_size),
            ("grad_accumulation_steps", cfg.grad_accumulation_steps),
            ("seed", cfg.seed),
            ("data_sharding", cfg.data_sharding),
        )
        if data.get(name) != now
    }
    if changed:
        text = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items())
        if not cfg.allow_resume_config_change:
            raise ValueError(
                f"resuming with a different setup ({text}) cannot continue the same data sequence and optimisation; "
                "restore the original values or pass --allow_resume_config_change True to accept the change"
            )
        log.warning("resuming with a changed setup (%s): the data sequence restarts from the checkpoint's seed", text)
    return state


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


def prepare_run_dir(cfg: FinetuneConfig, run_dir: Path) -> None:
    """Refuse to overwrite another run's logs and checkpoints unless resuming it."""
    has_run = (run_dir / "metrics.jsonl").exists() or any(cfg.run_root_dir.glob(f"{run_dir.name}--*_chkpt"))
    if has_run and not cfg.resume:
        latest = run_dir / LATEST_POINTER
        hint = f" --resum_vla_path {cfg.run_root_dir / latest.read_text().strip()}" if latest.is_file() else ""
        raise FileExistsError(
            f"{run_dir} already holds a run: resume it (--resume True{hint}) or start another one "
            "(--run_id_note NOTE or --run_id_override NAME)"
        )
    run_dir.mkdir(parents=True, exist_ok=True)


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


def _train(cfg: FinetuneConfig, ctx: DistContext) -> Path:
    cfg.validate()
    resume_state = check_resume(cfg, ctx)
    run_id = cfg.run_id()
    run_dir = Path(cfg.run_root_dir) / run_id
    if ctx.is_main:
        prepare_run_dir(cfg, run_dir)
    barrier(ctx)
    start_step = int(resume_state["step"]) if resume_state else 0
    craft_cfg = cfg.craft_config()
    use_craft_machinery = cfg.use_craft or cfg.craft_measure_freq > 0

    # Model: identical initialisation on every process, then the checkpoint's weights when resuming.
    seed_everything(cfg.seed)
    tokenizer = load_tokenizer(cfg.config_file_path)
    policy, spec = build_policy(cfg)
    anchor = Anchor(policy.vlm, craft_cfg) if use_craft_machinery else None  # theta_0, before any restore
    if resume_state is not None:
        assert cfg.resum_vla_path is not None
        restore_trainable_weights(policy, cfg.resum_vla_path, start_step)
    if cfg.gradient_checkpointing:
        policy.base_vlm.enable_gradient_checkpointing()
    policy.to(ctx.device).train()
    if anchor is not None and anchor.frozen_copy:
        anchor.vlm.to(ctx.device)
    trainable = [p for p in policy.parameters() if p.requires_grad]

    # Data: this process's stream, positioned after the samples already trained on.
    statistics = None
    if resume_state is not None:
        assert cfg.resum_vla_path is not None
        statistics = json.loads((Path(cfg.resum_vla_path) / "dataset_statistics.json").read_text())
    dataset, batches = build_data(cfg, ctx, tokenizer, start_step, statistics)
    statistics = dataset.dataset_statistics
    if ctx.is_main:
        save_config_snapshot(cfg, run_dir / CONFIG_SNAPSHOT)
        save_dataset_statistics(run_dir, statistics)
        atomic_write_json(run_dir / "episodes.json", dataset.info.manifest)

    optimizer = torch.optim.AdamW(
        trainable, lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay
    )
    scheduler = make_scheduler(optimizer, cfg.lr_warmup_steps, cfg.num_steps_before_decay)
    craft_step = CRaFTStep(trainable, craft_cfg, measure_only=not cfg.use_craft) if use_craft_machinery else None
    counters = {"skipped_steps": 0, "consecutive_nonfinite": 0}
    if resume_state is not None:
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        if craft_step is not None and resume_state.get("craft") is not None:
            craft_step.load_state_dict(resume_state["craft"])
        counters.update(resume_state.get("counters", {}))
        rngs = resume_state["rng"]
        set_rng_state(rngs[ctx.rank] if ctx.rank < len(rngs) else rngs[0])

    model: torch.nn.Module = policy
    if ctx.distributed:
        device_ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
        model = DistributedDataParallel(policy, device_ids=device_ids, find_unused_parameters=False)

    sinks = MetricsSinks(
        run_dir, ctx.is_main, cfg.console_log_freq, cfg.wandb_log_freq, cfg.max_steps, cfg.craft_retention_budget
    )
    if ctx.is_main and cfg.use_wandb:
        sinks.wandb_run = init_wandb(
            cfg.wandb_project,
            cfg.wandb_entity,
            cfg.wandb_mode,
            run_id,
            run_dir,
            {k: str(v) for k, v in asdict(cfg).items()},
        )
    sinks.open()
    if ctx.is_main:
        trainable_count = sum(p.numel() for p in trainable)
        sinks.message(
            f"[finetune] run {run_id}: {'CRaFT' if cfg.use_craft else 'baseline'}, {ctx.world_size} process(es) on "
            f"{ctx.device.type}, global batch {cfg.batch_size * ctx.world_size * cfg.grad_accumulation_steps}, "
            f"{trainable_count:,} trainable parameters, {len(dataset):,} transitions"
            + (f", resuming at step {start_step}" if start_step else "")
        )

    accum = cfg.grad_accumulation_steps
    stepper = GradientStepper(model, anchor, craft_step, craft_cfg, accum, cfg.seed, cfg.use_proprio, ctx)
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

        # Clip / measure the (already averaged over processes) gradient; skip the update if anything is non-finite.
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_norm)
        means = all_reduce_mean(losses, ctx)
        finite = bool(torch.isfinite(means[0]) and torch.isfinite(grad_norm))
        lr = scheduler.get_last_lr()[0]
        if finite:
            optimizer.step()
            counters["consecutive_nonfinite"] = 0
        else:
            if craft_step is not None and dual_before is not None:
                craft_step.dual.load_state_dict(dual_before)  # a skipped step does not move lambda either
            counters["skipped_steps"] += 1
            counters["consecutive_nonfinite"] += 1
            sinks.message(
                f"[finetune] step {step}: non-finite loss or gradient, update skipped "
                f"({counters['consecutive_nonfinite']} in a row)"
            )
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()

        elapsed = time.perf_counter() - step_start
        metrics = {
            M.LOSS: float(means[0]),
            M.CURR_L1: float(means[1]),
            M.NEXT_L1: float(means[2]),
            M.GRAD_NORM: float(grad_norm),
            M.LR: lr,
            M.SAMPLES_PER_S: cfg.batch_size * accum * ctx.world_size / elapsed,
            M.DATA_WAIT: data_wait / elapsed,
            M.SKIPPED: float(counters["skipped_steps"]),
            **M.peak_memory_gb(ctx.device.type),
        }
        if craft_stats is not None:
            metrics.update(craft_stats.to_metrics())
            if not finite:  # lambda was restored with the skipped update
                metrics[M.LAMBDA] = metrics[M.LAMBDA_AFTER] = craft_stats.lambda_before
        sinks.log(step, metrics)
        if ctx.is_main:
            progress.set_postfix(loss=f"{metrics[M.LOSS]:.4f}", refresh=False)

        if counters["consecutive_nonfinite"] >= cfg.max_nonfinite_steps:
            sinks.close()
            raise NonFiniteTrainingError(
                f"{counters['consecutive_nonfinite']} consecutive steps had a non-finite loss or gradient (last: step "
                f"{step}); lower --learning_rate, set --max_grad_norm, or check the data"
            )
        if step % cfg.save_freq == 0 or step == cfg.max_steps:
            state = {
                "step": step,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": gather_objects(rng_state(), ctx),
                "craft": craft_step.state_dict() if craft_step is not None else None,
                "counters": dict(counters),
                "data": {
                    "samples_per_process": step * cfg.batch_size * accum,
                    "world_size": ctx.world_size,
                    "batch_size": cfg.batch_size,
                    "grad_accumulation_steps": accum,
                    "seed": cfg.seed,
                    "data_sharding": cfg.data_sharding,
                },
                "run_id": run_id,
            }
            if ctx.is_main:
                folder = checkpoint_path(cfg.run_root_dir, run_id, step)
                save_checkpoint(
                    folder,
                    policy,
                    spec,
                    cfg.config_file_path,
                    statistics,
                    state,
                    (run_dir / CONFIG_SNAPSHOT).read_text(),
                    step,
                    cfg.merge_lora_during_training,
                )
                update_latest_pointer(run_dir, folder)
                if cfg.save_latest_checkpoint_only:
                    prune_checkpoints(cfg.run_root_dir, run_id, keep=folder)
                sinks.message(f"[finetune] saved checkpoint {folder}")
            barrier(ctx)
    progress.close()
    sinks.close()
    return run_dir
