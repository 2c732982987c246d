"""The frame stream of a run: RLDS episodes -> normalised, chunked, decoded, augmented, shuffled frames.

    episodes (fixed order, JPEG bytes) -> this rank's episodes (split, few-shot, shard) -> [train: episode shuffle,
    repeat] -> standardise, normalise, chunk -> frames -> [mixture sampling] -> [train: frame shuffle buffer over
    encoded frames] -> enumerate -> skip(start_sample) -> decode, resize, augment (seeded by the sample index)

Every random choice is seeded from (`seed`, rank), and augmentation seeds depend only on a sample's position in the
stream, so a stream restarted with `start_sample = n` yields exactly the samples n, n+1, ... of the original one:
that is how training resumes on the same data sequence. Ranks read disjoint episode shards with different seeds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prismatic.util.import_safety import import_tensorflow
from prismatic.vla.constants import RobotConstants
from prismatic.vla.datasets.registry import DatasetConfig, resolve_mixture, robot_constants
from prismatic.vla.datasets.rlds import tfdata
from prismatic.vla.datasets.rlds.episodes import (
    EpisodeTable,
    episode_manifest,
    load_episode_table,
    open_builder,
    select_few_shot,
    shard_for_rank,
    train_heldout_split,
)
from prismatic.vla.datasets.rlds.shards import validate_shards
from prismatic.vla.datasets.rlds.standardize import STANDARDIZE
from prismatic.vla.datasets.rlds.statistics import compute_statistics
from prismatic.vla.datasets.rlds.transforms import (
    augment_image,
    center_crop,
    chunk_actions,
    decode_and_resize,
    normalize_tf,
)

tf = import_tensorflow()
log = logging.getLogger(__name__)


@dataclass
class StreamConfig:
    data_root_dir: Path
    dataset_name: str  # a registered dataset or mixture
    num_images: int = 1  # cameras per sample: primary, then wrist
    resize_resolution: int = 224
    train: bool = True  # infinite, shuffled, sharded stream (False: each selected frame once, in order)
    image_aug: bool = False  # training augmentation (train streams only)
    center_crop: bool = False  # eval-time centre crop (for models trained with image_aug)
    shuffle_buffer_size: int = 100_000  # frames (encoded) in the shuffle buffer, capped at the frames this rank
    shuffle_buffer_ram_gb: float | None = 2.0  # reads per epoch and at this much encoded data (None: no RAM cap)
    episode_shuffle_buffer: int = 16  # episodes shuffled before they are split into frames
    seed: int = 7
    rank: int = 0
    world_size: int = 1
    # "episodes": ranks read disjoint episode shards with their own seeds (default); "samples": every rank reads
    # the same global stream and keeps every world_size-th sample, so the global sample sequence does not depend
    # on the number of processes (W processes x batch B see exactly what 1 process x batch W*B sees).
    sharding: str = "episodes"
    start_sample: int = 0  # skip this many samples of this rank's stream (exact resume)
    n_shot_episodes: int | None = None  # K episodes per task (statistics of the subset only)
    heldout_episode_fraction: float = 0.0  # the last fraction of the episodes is held out (0: train on every one)
    use_heldout_episodes: bool = False  # stream the held-out episodes instead (offline evaluation)
    drop_last_chunk_frames: bool = True  # KEEP: the last 7 frames of an episode are never current frames
    statistics: dict[str, Any] | None = None  # normalise with these (e.g. a checkpoint's) instead of computing
    ram_budget_gb: float = 1.0  # tf.data autotune RAM budget
    use_cache: bool = True  # cache episode tables (see episodes.cache_root)
    num_parallel_calls: int | None = None  # per map; None = autotuned (1 = sequential, for benchmarks)
    prefetch: bool = True

    def validate(self) -> None:
        """Reject bad values, naming the training flag each one comes from."""
        if self.num_images < 1:
            raise ValueError(f"--num_images_in_input must be >= 1 (got {self.num_images})")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world size {self.world_size}")
        if self.start_sample < 0:
            raise ValueError(f"start_sample must be >= 0 (got {self.start_sample})")
        if self.n_shot_episodes is not None and self.n_shot_episodes < 1:
            raise ValueError(f"--n_shot_episodes must be >= 1 (got {self.n_shot_episodes})")
        if self.shuffle_buffer_size < 1:
            raise ValueError(f"--shuffle_buffer_size must be >= 1 (got {self.shuffle_buffer_size})")
        if self.sharding not in ("episodes", "samples"):
            raise ValueError(f"--data_sharding must be episodes or samples (got {self.sharding!r})")
        if not 0 <= self.heldout_episode_fraction < 1:
            raise ValueError(f"--heldout_episode_fraction must be in [0, 1) (got {self.heldout_episode_fraction})")
        if self.shuffle_buffer_ram_gb is not None and not self.shuffle_buffer_ram_gb > 0:
            raise ValueError(f"--shuffle_buffer_ram_gb must be > 0 (got {self.shuffle_buffer_ram_gb})")


@dataclass
class StreamInfo:
    robot: RobotConstants
    statistics: dict[str, Any]  # dataset_statistics.json content
    selected_episodes: dict[str, list[int]]  # per dataset, all ranks
    rank_episodes: dict[str, list[int]]  # per dataset, this rank
    manifest: list[dict[str, Any]]  # the selected episodes, for the run directory
    num_transitions: int  # steps of the selected episodes (all ranks)
    num_frames: int  # frames usable as current frames (all ranks)
    shuffle_buffer_size: int = 0  # effective, after the RAM cap
    tables: dict[str, EpisodeTable] = field(default_factory=dict, repr=False)


def _usable_frames(lengths: np.ndarray, future: int, drop: bool) -> int:
    return int(np.maximum(lengths - future, 0).sum()) if drop else int(lengths.sum())


def _traj_transform(
    config: DatasetConfig, stats: dict[str, Any], cameras: list[str], future: int, drop_last: bool
) -> Any:
    standardize = STANDARDIZE[config.standardize]
    kind = config.robot.normalization

    def fn(index: Any, episode: dict[str, Any]) -> dict[str, Any]:
        steps = standardize(episode["steps"])
        action = normalize_tf(steps["action"], stats["action"], kind)
        proprio = normalize_tf(steps["observation"]["proprio"], stats["proprio"], kind)
        chunks, frames = chunk_actions(action, future, drop_last)
        num_frames = tf.shape(frames)[0]
        return {
            # cameras renamed "0", "1", ... in role order, so that datasets of a mixture share one structure
            "images": {str(i): tf.gather(steps["observation"][cam], frames) for i, cam in enumerate(cameras)},
            "action": chunks,
            "proprio": tf.gather(proprio, frames),
            "instruction": tf.gather(steps[config.language_key], frames),
            "dataset_name": tf.fill([num_frames], config.name),
            "episode_index": tf.fill([num_frames], index),
            "frame_index": tf.cast(frames, tf.int64),
        }

    return fn


def _frame_transform(cfg: StreamConfig) -> Any:
    augment = cfg.train and cfg.image_aug
    seed_rank = cfg.rank if cfg.sharding == "episodes" else 0  # sample sharding: one global stream
    base_seed = tf.constant([cfg.seed, 1_000_003 * seed_rank + 17], dtype=tf.int64)

    def fn(sample_index: Any, frame: dict[str, Any]) -> dict[str, Any]:
        images = []
        for cam_index in range(cfg.num_images):
            image = decode_and_resize(frame["images"][str(cam_index)], cfg.resize_resolution)
            if augment:  # each camera its own seed, a function of the sample's position only
                seed = tf.random.experimental.stateless_fold_in(base_seed, sample_index)
                seed = tf.random.experimental.stateless_fold_in(seed, cam_index)
                image = augment_image(image, tf.cast(seed, tf.int32))
            elif cfg.center_crop:
                image = center_crop(image)
            images.append(image)
        out = {k: v for k, v in frame.items() if k != "images"}
        out["images"] = tf.stack(images)
        out["sample_index"] = sample_index
        return out

    return fn


def build_frame_stream(cfg: StreamConfig) -> tuple[Any, StreamInfo]:
    """The tf.data stream of this rank and what was selected to build it."""
    cfg.validate()
    by_samples = cfg.sharding == "samples"
    stream_rank, stream_world = (0, 1) if by_samples else (cfg.rank, cfg.world_size)
    mixture = resolve_mixture(cfg.dataset_name)
    robot = robot_constants(cfg.dataset_name)
    future = robot.action_chunk - 1
    statistics: dict[str, Any] = {}
    selected: dict[str, list[int]] = {}
    rank_eps: dict[str, list[int]] = {}
    manifest: list[dict[str, Any]] = []
    tables: dict[str, EpisodeTable] = {}
    streams, weights = [], []
    num_transitions = num_frames = rank_frames = 0
    bytes_per_frame = []
    for ds_index, (config, weight) in enumerate(mixture):
        cameras = config.camera_keys(cfg.num_images)
        builder = open_builder(cfg.data_root_dir, config.name)
        validate_shards(builder)  # a missing, empty or truncated shard fails here, naming the file
        table = load_episode_table(builder, config, use_cache=cfg.use_cache)
        tables[config.name] = table
        train_eps, heldout_eps = train_heldout_split(table.num_episodes, cfg.heldout_episode_fraction)
        candidates = heldout_eps if cfg.use_heldout_episodes else train_eps
        if not candidates:
            raise ValueError(
                f"{config.name}: no held-out episodes at --heldout_episode_fraction {cfg.heldout_episode_fraction} "
                f"(train with e.g. --heldout_episode_fraction 0.05 to evaluate on unseen episodes)"
            )
        chosen = candidates
        if cfg.n_shot_episodes is not None:
            chosen = select_few_shot(table, candidates, cfg.n_shot_episodes, cfg.seed)
        if cfg.statistics is not None:
            if config.name not in cfg.statistics:
                raise ValueError(
                    f"the dataset statistics given (e.g. a checkpoint's dataset_statistics.json) have no entry for "
                    f"{config.name}, only {sorted(cfg.statistics)}"
                )
            stats = cfg.statistics[config.name]
        else:  # few-shot runs use the subset's statistics; otherwise the whole dataset's, as the reference
            stats = compute_statistics(
                table, chosen if cfg.n_shot_episodes else list(range(table.num_episodes)), config
            )
        statistics[config.name] = stats
        selected[config.name] = chosen
        mine = shard_for_rank(chosen, stream_rank, stream_world)
        rank_eps[config.name] = mine
        manifest.extend(episode_manifest(table, chosen))
        lengths = table.lengths[chosen]
        num_transitions += int(lengths.sum())
        frames = _usable_frames(lengths, future, cfg.drop_last_chunk_frames)
        if frames == 0:
            raise ValueError(f"{config.name}: the selected episodes are all shorter than the action chunk")
        num_frames += frames
        rank_frames += _usable_frames(table.lengths[mine], future, cfg.drop_last_chunk_frames)
        info = builder.info.splits["train"]
        bytes_per_frame.append(info.num_bytes / max(int(table.lengths.sum()), 1))

        ds = tfdata.keep_episodes(tfdata.read_episodes(builder), mine, table.num_episodes)
        if cfg.train:
            buffer = max(1, min(cfg.episode_shuffle_buffer, len(mine)))
            ds = ds.shuffle(buffer, seed=cfg.seed * 7919 + stream_rank * 31 + ds_index, reshuffle_each_iteration=True)
            ds = ds.repeat()
        transform = _traj_transform(config, stats, cameras, future, cfg.drop_last_chunk_frames)
        ds = tfdata.traj_map(ds, transform, cfg.num_parallel_calls)
        streams.append(tfdata.flatten(ds, cycle_length=4 if cfg.train else 1, parallel=cfg.num_parallel_calls))
        weights.append(weight * frames)

    stream = tfdata.mix(streams, weights, seed=cfg.seed + stream_rank)
    effective_buffer = 0
    if cfg.train:
        # A buffer larger than one epoch of this rank's frames would only hold repeated copies of them.
        requested = min(cfg.shuffle_buffer_size, rank_frames)
        effective_buffer = tfdata.bounded_shuffle_buffer(
            requested, float(np.mean(bytes_per_frame)), cfg.shuffle_buffer_ram_gb
        )
        if effective_buffer < requested:
            log.warning(
                "shuffle buffer capped at %d frames (~%.1f GB of encoded frames) by --shuffle_buffer_ram_gb %s; "
                "raise it to use %d",
                effective_buffer,
                effective_buffer * np.mean(bytes_per_frame) / 2**30,
                cfg.shuffle_buffer_ram_gb,
                cfg.shuffle_buffer_size,
            )
        stream = stream.shuffle(effective_buffer, seed=cfg.seed * 104729 + stream_rank, reshuffle_each_iteration=False)
    stream = stream.enumerate()
    if by_samples and cfg.world_size > 1:
        # global sample g goes to rank g % world_size; this rank's n-th sample is global n * world_size + rank
        stream = stream.skip(cfg.start_sample * cfg.world_size).shard(cfg.world_size, cfg.rank)
    elif cfg.start_sample:
        stream = stream.skip(cfg.start_sample)
    stream = tfdata.frame_map(stream, _frame_transform(cfg), cfg.num_parallel_calls)
    if cfg.prefetch:
        stream = stream.prefetch(tfdata.AUTOTUNE)
    stream = stream.with_options(tfdata.pipeline_options(cfg.ram_budget_gb, parallel=cfg.num_parallel_calls != 1))
    info = StreamInfo(
        robot=robot,
        statistics=statistics,
        selected_episodes=selected,
        rank_episodes=rank_eps,
        manifest=manifest,
        num_transitions=num_transitions,
        num_frames=num_frames,
        shuffle_buffer_size=effective_buffer,
        tables=tables,
    )
    return stream, info
