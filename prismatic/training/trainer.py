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
import functools
import hashlib
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from craft import (
    CRaFTConfig,
    CRaFTConfigError,
    CRaFTStep,
    CRaFTStepStats,
    RetentionResult,
    retention_loss,
    retention_subset,
)
from prismatic.models.anchor import Anchor, retention_features
from prismatic.models.batch import PaddedCollatorForActionPrediction, PolicyBatch, RLDSBatchTransform
from prismatic.models.loaders import PolicySpec, load_policy, load_prismatic_vlm
from prismatic.models.lora import LoRASettings, apply_lora
from prismatic.models.policy import VLAAdapterPolicy
from prismatic.models.precision import Precision, store_frozen_weights
from prismatic.models.tokenizer import load_tokenizer
from prismatic.models.vlm import PrismaticVLM, VLMOutput
from prismatic.training import metrics
from prismatic.training.checkpointing import (
    CheckpointInfo,
    NonFiniteTrainingError,
    RunPaths,
    TrainingState,
    inspect_checkpoint,
    verify_checkpoint,
)
from prismatic.training.config import CONFIG_SNAPSHOT, FinetuneConfig, craft_flag_error, save_config_snapshot
from prismatic.training.distributed import (
    DistContext,
    all_reduce_mean,
    barrier,
    broadcast_parameters,
    init_distributed,
    on_main,
    seed_everything,
    shutdown_distributed,
)
from prismatic.training.metrics import MetricsSinks, init_wandb
from prismatic.training.resume import check_destination, check_resume, check_warm_start, warm_start_message
from prismatic.training.schedule import LRSchedule
from prismatic.training.update_guard import check_adamw_update
from prismatic.training.validation import Validator
from prismatic.util.atomic_io import atomic_write_json
from prismatic.util.cli import USER_ERRORS
from prismatic.vla.datasets import RLDSDataset
from prismatic.vla.datasets.registry import robot_constants
from prismatic.vla.datasets.rlds.statistics import save_dataset_statistics

__all__ = ["NonFiniteTrainingError", "train"]


def noise_seed(seed: int, step: int, micro: int) -> int:
    """Seed of the action head's training noise for one micro-batch (same on every process and after resume)."""
    digest = hashlib.sha256(f"{seed}/{step}/{micro}".encode()).hexdigest()
    return int(digest[:15], 16)


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
    """The policy to train: the Prismatic VLM at `--vlm_path` with a new action head, or (warm start) the VLM, head,
    proprio projector and action queries of the `--init_from` folder; LoRA (when on) starts from zero on top."""
    robot = robot_constants(cfg.dataset_name)
    start = load_policy(cfg.init_from, num_images_in_input=cfg.num_images_in_input) if cfg.init_from else None
    if start is not None:
        vlm = start.policy.vlm
    else:
        vlm = load_prismatic_vlm(
            cfg.vlm_path, num_images=cfg.num_images_in_input, vision_weights_dir=cfg.vision_weights_dir
        )
    vlm_module = trainable_vlm(vlm, cfg.use_lora, cfg.lora_rank, cfg.lora_dropout)
    policy = VLAAdapterPolicy(vlm_module, robot, use_pro_version=cfg.use_pro_version, use_proprio=cfg.use_proprio)
    if start is not None:
        policy.action_head.load_state_dict(start.policy.action_head.state_dict())
        if policy.proprio_projector is not None and start.policy.proprio_projector is not None:
            policy.proprio_projector.load_state_dict(start.policy.proprio_projector.state_dict())
    spec = PolicySpec(
        num_images_in_input=cfg.num_images_in_input,
        use_proprio=cfg.use_proprio,
        use_pro_version=cfg.use_pro_version,
        action_chunk=robot.action_chunk,
        action_dim=robot.action_dim,
        proprio_dim=robot.proprio_dim,
        normalization=robot.normalization.value,
        dataset_name=cfg.dataset_name,
        base_vlm_path=str(Path(cfg.init_from or cfg.vlm_path).resolve()),  # what the LoRA adapter applies to
        lora={"rank": cfg.lora_rank, "dropout": cfg.lora_dropout} if cfg.use_lora else None,
    )
    return policy, spec


def start_checks(cfg: FinetuneConfig, ctx: DistContext) -> tuple[RunPaths, CheckpointInfo | None, list[str]]:
    """Everything knowable before data or model: flags, the checkpoint to resume from (or the folder a warm start
    begins from), and where the run writes. Returns what the run log should say about it."""
    cfg.validate()
    info, notes = None, []
    if cfg.resume:
        assert cfg.resum_vla_path is not None
        on_main(lambda: verify_checkpoint(cfg.resum_vla_path), ctx, USER_ERRORS)  # hashes every file once
        info = inspect_checkpoint(cfg.resum_vla_path)
        if changes := check_resume(cfg, info, ctx.world_size):
            notes.append(f"resuming with changed flags: {', '.join(map(str, changes))}")
    elif cfg.init_from is not None:
        notes.append(on_main(lambda: warm_start_message(cfg, check_warm_start(cfg)), ctx, USER_ERRORS))
    paths = RunPaths(Path(cfg.run_root_dir), cfg.run_id())
    on_main(lambda: check_destination(paths, info), ctx, USER_ERRORS)
    return paths, info, notes


def open_run(
    cfg: FinetuneConfig, ctx: DistContext, paths: RunPaths, info: CheckpointInfo | None, notes: list[str]
) -> MetricsSinks:
    """The run folder (crash leftovers removed), its logs (cut back to the resumed step) and WandB."""
    start_step = info.step if info is not None else 0
    if ctx.is_main:
        paths.run_dir.mkdir(parents=True, exist_ok=True)
        paths.clean_staging_leftovers()
    barrier(ctx)
    sinks = MetricsSinks(
        paths.run_dir, ctx.is_main, cfg.console_log_freq, cfg.wandb_log_freq, cfg.max_steps, cfg.craft_retention_budget
    )
    if cfg.use_wandb:  # before anything heavy: a missing login fails in seconds, on every process

        def start_wandb() -> None:
            config = {key: str(value) for key, value in asdict(cfg).items()}
            sinks.wandb_run = init_wandb(cfg.wandb_settings(paths.run_dir), paths.run_id, config)

        on_main(start_wandb, ctx, USER_ERRORS)
    branched_from = info.folder.parent / info.run_id if info is not None and info.run_id != paths.run_id else None
    sinks.open(start_step, history_from=branched_from)
    for note in notes:
        sinks.message(note, step=start_step)
    return sinks


def build_data(
    cfg: FinetuneConfig, ctx: DistContext, run_dir: Path, info: CheckpointInfo | None
) -> tuple[RLDSDataset, Iterator[PolicyBatch], Validator | None]:
    """This process's batches, positioned after the samples already trained on (before the model: a bad dataset
    fails in seconds), and the main process's validator (`--use_val_set`). The run folder records the configuration,
    statistics and chosen episodes."""
    tokenizer = load_tokenizer(cfg.config_file_path)
    stream = cfg.stream_config(
        ctx.rank, ctx.world_size, info.step if info is not None else 0, info.statistics if info else None
    )
    dataset = RLDSDataset.from_config(stream, RLDSBatchTransform(tokenizer))
    if ctx.is_main:
        save_config_snapshot(cfg, run_dir / CONFIG_SNAPSHOT)
        save_dataset_statistics(run_dir, dataset.dataset_statistics)
        atomic_write_json(run_dir / "episodes.json", dataset.info.manifest)
    validator = None
    if cfg.use_val_set and ctx.is_main:
        statistics = dataset.dataset_statistics
        validator = Validator(stream, statistics, tokenizer, cfg.batch_size, cfg.val_time_limit, ctx.device)
    collate = PaddedCollatorForActionPrediction(tokenizer.pad_token_id)
    # Pinned host batches on CUDA, so that the non-blocking copy to the GPU really is asynchronous.
    loader = DataLoader(
        dataset, batch_size=cfg.batch_size, num_workers=0, collate_fn=collate, pin_memory=ctx.device.type == "cuda"
    )
    batches = iter(loader)
    return dataset, batches, validator


@dataclass
class Trainee:
    """The model side of a run: the policy (and its DDP wrapper), CRaFT's anchor and step, the optimizer and
    schedule, and the `TrainingState` that saves and restores them."""

    policy: VLAAdapterPolicy
    model: torch.nn.Module  # the policy, or its DDP wrapper
    trainable: list[torch.nn.Parameter]
    anchor: Anchor | None
    craft_step: CRaFTStep | None
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    state: TrainingState
    precision: Precision


def make_optimizer(trainable: list[torch.nn.Parameter], cfg: FinetuneConfig) -> torch.optim.AdamW:
    """AdamW over the fp32 trainable parameters: the fused kernel (one launch for all tensors) where the device has
    one, the multi-tensor `foreach` implementation otherwise."""
    device = trainable[0].device
    fused = device.type in ("cuda", "cpu", "xpu", "mps")
    return torch.optim.AdamW(
        trainable,
        lr=cfg.learning_rate,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=cfg.weight_decay,
        fused=fused or None,
        foreach=None if fused else True,
    )


def wrap_ddp(policy: VLAAdapterPolicy, cfg: FinetuneConfig, ctx: DistContext) -> torch.nn.Module:
    """The DDP wrapper of a baseline run (see docs/MODEL.md, "DDP"): gradients are views into DDP's buckets (no
    second copy of them). `static_graph` stays off: DDP's static-graph mode routes the forward's outputs through a
    sink it cannot rebuild inside the policy's `PolicyOutput`, so the first step's gradients would never be
    all-reduced (a two-process test caught it), and with every parameter used on every step it has nothing to save.
    A CRaFT run is not wrapped: its steps compute both gradients with `torch.autograd.grad` and reduce them in one
    all-reduce of their own, so DDP's buckets would only hold a dead copy of the gradients; its processes start from
    rank 0's weights."""
    if not ctx.distributed:
        return policy
    if cfg.use_craft:
        broadcast_parameters(policy, ctx)
        return policy
    device_ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(
        policy,
        device_ids=device_ids,
        find_unused_parameters=False,
        gradient_as_bucket_view=True,
    )


def build_trainee(
    cfg: FinetuneConfig,
    ctx: DistContext,
    paths: RunPaths,
    statistics: dict[str, Any],
    info: CheckpointInfo | None,
    built: tuple[VLAAdapterPolicy, PolicySpec] | None = None,
) -> Trainee:
    """Identical initialisation on every process, then the checkpoint's state when resuming. `built`: a policy made
    elsewhere (e.g. the GPU check's random full-size one) instead of the one `cfg` describes."""
    seed_everything(cfg.seed)
    precision = Precision.from_flag(cfg.base_precision, ctx.device)
    policy, spec = built if built is not None else build_policy(cfg)
    craft_cfg = cfg.craft_config()
    use_craft_machinery = cfg.use_craft or cfg.craft_measure_freq > 0
    try:
        anchor = Anchor(policy.vlm, craft_cfg) if use_craft_machinery else None  # theta_0, before any restore
    except CRaFTConfigError as err:  # e.g. an anchor layer the model does not have
        raise craft_flag_error(err) from err
    # The VLM's frozen weights (and a full fine-tune's anchor copy) in the run's base precision; trainable ones, and
    # the action head whole (its unused, frozen `film_gen` included: it is saved with the head), stay fp32.
    store_frozen_weights(policy.vlm, precision.frozen_dtype)
    if anchor is not None and anchor.frozen_copy:
        store_frozen_weights(anchor.vlm, precision.frozen_dtype)
        anchor.vlm.to(ctx.device)
    if cfg.gradient_checkpointing:
        policy.base_vlm.enable_gradient_checkpointing()
    policy.to(ctx.device).train()
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = make_optimizer(trainable, cfg)
    schedule = LRSchedule(cfg.learning_rate, cfg.lr_warmup_steps, cfg.num_steps_before_decay)
    craft_step = CRaFTStep(trainable, craft_cfg, measure_only=not cfg.use_craft) if use_craft_machinery else None
    state = TrainingState(paths, cfg, ctx, policy, spec, optimizer, schedule, craft_step, statistics)
    if info is not None:
        state.restore(info)
    model = wrap_ddp(policy, cfg, ctx)
    return Trainee(policy, model, trainable, anchor, craft_step, optimizer, schedule, state, precision)


# ---------------------------------------------------------------------------------------------------------------
# one optimizer step
# ---------------------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class GradientStepper:
    """Everything needed to turn one step's micro-batches into `param.grad` (baseline or CRaFT)."""

    model: torch.nn.Module  # the policy, or its DDP wrapper
    anchor: Anchor | None
    craft_step: CRaFTStep | None
    craft_cfg: CRaFTConfig
    accum: int
    seed: int
    ctx: DistContext
    precision: Precision

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return self.precision.autocast()

    def retention(self, out: VLMOutput, batch: PolicyBatch) -> RetentionResult:
        """L_ret of a forward's features against the anchor's on the same samples (call under `autocast`)."""
        assert self.anchor is not None
        features = retention_features(out, self.craft_cfg, self.anchor.num_layers)
        return retention_loss(features, self.anchor.features(batch))

    def subset_rng(self, step: int, micro: int) -> torch.Generator:
        """Which samples `--craft_retention_fraction` keeps: seeded by seed, step, micro-batch and rank, so a resumed
        run draws the same subsets and the processes draw independent ones."""
        return torch.Generator().manual_seed(noise_seed(self.seed + self.ctx.rank, step, micro))


def subset_retention(stepper: GradientStepper, part: PolicyBatch) -> RetentionResult:
    """`--craft_retention_fraction`: L_ret of a subset of the micro-batch in its own forward of the VLM (no action
    head; stopped at the deepest layer the features need), run after the action backward has freed its graph."""
    assert stepper.anchor is not None
    vlm = unwrap_policy(stepper.model).vlm
    with stepper.autocast():
        out = vlm(**part.vlm_inputs(), stop_after_layer=stepper.anchor.deepest)
        return stepper.retention(out, part)


def unwrap_policy(model: torch.nn.Module) -> VLAAdapterPolicy:
    """The policy inside a DDP wrapper (or `model` itself)."""
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    assert isinstance(inner, VLAAdapterPolicy)
    return inner


@dataclass
class StepGradients:
    losses: torch.Tensor  # this process's mean [loss, current-action L1, next-actions L1] over its micro-batches
    craft_stats: CRaFTStepStats | None
    data_wait: float  # seconds spent waiting for batches


def compute_gradients(
    stepper: GradientStepper, batches: Iterator[PolicyBatch], step: int, measure: bool
) -> StepGradients:
    """Run the step's micro-batches into `param.grad`. Baseline micro-batches backpropagate loss / K (DDP averages
    over processes on the last one); CRaFT micro-batches (or a baseline's measurement steps) go through `CRaFTStep`,
    which averages both gradients over micro-batches and processes in one all-reduce."""
    model, ctx = stepper.model, stepper.ctx
    is_ddp = isinstance(model, DistributedDataParallel)
    losses = torch.zeros(3, device=ctx.device)
    data_wait = 0.0
    for micro in range(stepper.accum):
        wait_start = time.perf_counter()
        batch = next(batches).to(ctx.device, non_blocking=True)
        data_wait += time.perf_counter() - wait_start
        defer_sync = is_ddp and (measure or micro < stepper.accum - 1)
        with model.no_sync() if defer_sync else contextlib.nullcontext():  # type: ignore[operator]
            with stepper.autocast():
                out = model(batch, noise_seed=noise_seed(stepper.seed, step, micro))
            errors = (out.actions.float() - batch.actions).abs()
            loss = errors.mean()
            losses += torch.stack([loss.detach(), errors[:, 0].mean().detach(), errors[:, 1:].mean().detach()])
            if measure:
                assert stepper.craft_step is not None
                fraction = stepper.craft_cfg.retention_fraction
                if fraction < 1.0:  # L_ret from a random subset, in its own forward after the action backward
                    part = batch.select(retention_subset(len(batch), fraction, stepper.subset_rng(step, micro)))
                    stepper.craft_step.accumulate(loss, functools.partial(subset_retention, stepper, part))
                else:
                    with stepper.autocast():
                        stepper.craft_step.accumulate(loss, stepper.retention(out.vlm, batch))
            else:
                (loss / stepper.accum).backward()
    stats = stepper.craft_step.finish(sync=ctx.distributed) if measure and stepper.craft_step is not None else None
    return StepGradients(losses / stepper.accum, stats, data_wait)


@dataclass
class UpdateResult:
    grad_norm: float  # of the process-averaged gradient, before clipping
    lr: float
    update_ratio: float  # ||update|| / ||weights|| (NaN when skipped before it was computed)
    skip_reason: str | None  # why the update was not applied, or None

    @property
    def taken(self) -> bool:
        return self.skip_reason is None


def apply_update(trainee: Trainee, cfg: FinetuneConfig, step: int, mean_loss: torch.Tensor) -> UpdateResult:
    """Clip and measure the gradient, then look at the AdamW update before making it: a non-finite loss or gradient,
    or an update out of all proportion to the weights, is skipped. Gradients are cleared either way."""
    optimizer = trainee.optimizer
    max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(trainee.trainable, max_norm)
    lr = trainee.schedule.apply(optimizer, step - 1)
    update_ratio, skip_reason = float("nan"), None
    if not bool(torch.isfinite(mean_loss) and torch.isfinite(grad_norm)):
        skip_reason = "non-finite loss or gradient"
    else:
        update = check_adamw_update(optimizer)
        update_ratio = update.ratio
        if not update.finite:
            skip_reason = "the update would make the weights non-finite"
        elif not update.acceptable(cfg.max_update_ratio):
            skip_reason = (
                f"the update would move the weights by {update.ratio:.3g} x their norm "
                f"(limit --max_update_ratio {cfg.max_update_ratio})"
            )
    if skip_reason is None:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return UpdateResult(float(grad_norm), lr, update_ratio, skip_reason)


def record_update(trainee: Trainee, update: UpdateResult, sinks: MetricsSinks, step: int) -> None:
    """Count skipped updates; CRaFT's dual update is committed only with an update actually taken."""
    counters = trainee.state.counters
    if update.taken:
        counters["consecutive_nonfinite"] = 0
        if trainee.craft_step is not None:
            trainee.craft_step.commit()
        return
    counters["skipped_steps"] += 1
    counters["consecutive_nonfinite"] += 1
    sinks.message(f"{update.skip_reason}, update skipped ({counters['consecutive_nonfinite']} in a row)", step)


def step_metrics(
    cfg: FinetuneConfig,
    ctx: DistContext,
    means: torch.Tensor,
    grads: StepGradients,
    update: UpdateResult,
    counters: dict[str, int],
    seconds: float,
) -> dict[str, float]:
    """The step's `metrics.jsonl` / WandB row, in the guide's names."""
    row = {
        metrics.LOSS: float(means[0]),
        metrics.CURR_L1: float(means[1]),
        metrics.NEXT_L1: float(means[2]),
        metrics.GRAD_NORM: update.grad_norm,
        metrics.LR: update.lr,
        metrics.UPDATE_RATIO: update.update_ratio,
        metrics.SAMPLES_PER_S: cfg.batch_size * cfg.grad_accumulation_steps * ctx.world_size / seconds,
        metrics.DATA_WAIT: grads.data_wait / seconds,
        metrics.SKIPPED: float(counters["skipped_steps"]),
        **metrics.peak_memory_gb(ctx.device.type),
    }
    if grads.craft_stats is not None:
        row.update(metrics.craft_metrics(grads.craft_stats, update_taken=update.taken))
    return row


def stop_if_diverging(
    cfg: FinetuneConfig, counters: dict[str, int], update: UpdateResult, step: int, sinks: MetricsSinks
) -> None:
    if counters["consecutive_nonfinite"] >= cfg.max_nonfinite_steps:
        sinks.close()
        raise NonFiniteTrainingError(
            f"{counters['consecutive_nonfinite']} consecutive steps were skipped (last: step {step}, "
            f"{update.skip_reason}); lower --learning_rate, set --max_grad_norm, or check the data"
        )


def describe_run(
    cfg: FinetuneConfig, ctx: DistContext, run_id: str, trainee: Trainee, transitions: int, start_step: int
) -> str:
    return (
        f"run {run_id}: {'CRaFT' if cfg.use_craft else 'baseline'}, {ctx.world_size} process(es) on "
        f"{ctx.device.type}, global batch {cfg.batch_size * ctx.world_size * cfg.grad_accumulation_steps}, "
        f"{sum(p.numel() for p in trainee.trainable):,} trainable parameters, {trainee.precision.describe()}, "
        f"{transitions:,} transitions" + (f", resuming at step {start_step}" if start_step else "")
    )


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
    paths, info, notes = start_checks(cfg, ctx)
    sinks = open_run(cfg, ctx, paths, info, notes)
    dataset, batches, validator = build_data(cfg, ctx, paths.run_dir, info)
    trainee = build_trainee(cfg, ctx, paths, dataset.dataset_statistics, info)
    start_step = info.step if info is not None else 0
    sinks.message(describe_run(cfg, ctx, paths.run_id, trainee, len(dataset), start_step))
    stepper = GradientStepper(
        model=trainee.model,
        anchor=trainee.anchor,
        craft_step=trainee.craft_step,
        craft_cfg=cfg.craft_config(),
        accum=cfg.grad_accumulation_steps,
        seed=cfg.seed,
        ctx=ctx,
        precision=trainee.precision,
    )
    steps = range(start_step + 1, cfg.max_steps + 1)
    progress = tqdm(steps, initial=start_step, total=cfg.max_steps, disable=not ctx.is_main, desc="finetune")
    for step in progress:
        started = time.perf_counter()
        measure = cfg.use_craft or (cfg.craft_measure_freq > 0 and step % cfg.craft_measure_freq == 0)
        grads = compute_gradients(stepper, batches, step, measure)
        means = all_reduce_mean(grads.losses, ctx)
        update = apply_update(trainee, cfg, step, means[0])
        record_update(trainee, update, sinks, step)
        row = step_metrics(cfg, ctx, means, grads, update, trainee.state.counters, time.perf_counter() - started)
        if validator is not None and step % cfg.val_freq == 0:
            row.update(validator.run(trainee.policy, trainee.anchor, stepper.craft_cfg, trainee.precision))
        sinks.log(step, row)
        progress.set_postfix(loss=f"{row[metrics.LOSS]:.4f}", refresh=False)
        stop_if_diverging(cfg, trainee.state.counters, update, step, sinks)
        if step % cfg.save_freq == 0 or step == cfg.max_steps:
            sinks.message(f"saved checkpoint {trainee.state.save(step)}", step)
    sinks.close()
    return paths.run_dir
