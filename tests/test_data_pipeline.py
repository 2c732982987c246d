"""LIBERO RLDS data pipeline: transforms, statistics, few-shot, sharding, determinism, exact restart, collation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from prismatic.models.batch import PaddedCollatorForActionPrediction, RLDSBatchTransform
from prismatic.models.tokenizer import load_tokenizer
from prismatic.synthetic.rlds_writer import SyntheticSuiteSpec, write_synthetic_suite
from prismatic.util.import_safety import import_tensorflow
from prismatic.vla.constants import NormalizationType
from prismatic.vla.datasets import MIXTURES, RLDSDataset
from prismatic.vla.datasets.rlds import episodes as episodes_module
from prismatic.vla.datasets.rlds.episodes import select_few_shot, train_heldout_split
from prismatic.vla.datasets.rlds.standardize import libero
from prismatic.vla.datasets.rlds.stream import StreamConfig, build_frame_stream
from prismatic.vla.datasets.rlds.transforms import augment_image, center_crop, chunk_actions, normalize_tf
from prismatic.vla.normalization import normalize, unnormalize

tf = import_tensorflow()
SPATIAL, GOAL = "libero_spatial_no_noops", "libero_goal_no_noops"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("libero_rlds")
    write_synthetic_suite(root, SyntheticSuiteSpec(SPATIAL, episodes_per_task=3, seed=11), num_workers=2)
    write_synthetic_suite(root, SyntheticSuiteSpec(GOAL, episodes_per_task=1, seed=12), num_workers=2)
    return root


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path_factory.getbasetemp() / "vla_cache"
    monkeypatch.setenv(episodes_module.CACHE_ENV, str(cache))
    return cache


def take(cfg: StreamConfig, num_samples: int) -> list[dict[str, Any]]:
    stream, _ = build_frame_stream(cfg)
    return list(stream.take(num_samples).as_numpy_iterator())


def stream_cfg(root: Path, **kw: Any) -> StreamConfig:
    defaults: dict[str, Any] = {
        "data_root_dir": root,
        "dataset_name": SPATIAL,
        "num_images": 2,
        "shuffle_buffer_size": 200,
    }
    return StreamConfig(**{**defaults, **kw})


# -- transforms ---------------------------------------------------------------------------------------------------
STATS = {
    "q01": [-0.5, 0.0, 1.0],
    "q99": [0.5, 2.0, 1.0],
    "min": [-1.0, -1.0, 1.0],
    "max": [1.0, 3.0, 1.0],
    "mask": [True, True, False],
}


def test_normalisation_span_is_formed_in_float64_and_rounded_once_like_the_reference() -> None:
    """The reference's statistics are float64 numpy arrays: `hi - lo + 1e-8` is rounded to float32 once."""
    stats = {"q01": [0.1, 0.013], "q99": [0.7, 0.3333], "min": [0.0, 0.0], "max": [1.0, 1.0]}
    lo64, hi64 = np.array(stats["q01"]), np.array(stats["q99"])
    span32 = (hi64 - lo64 + 1e-8).astype(np.float32)
    assert (span32 != hi64.astype(np.float32) - lo64.astype(np.float32) + np.float32(1e-8)).all()  # rounding matters
    raw = np.random.default_rng(1).uniform(0.0, 0.8, (64, 2)).astype(np.float32)
    expected = np.clip(np.float32(2) * (raw - lo64.astype(np.float32)) / span32 - np.float32(1), -1, 1)
    frames = normalize_tf(tf.constant(raw), stats, NormalizationType.BOUNDS_Q99).numpy()
    np.testing.assert_array_equal(frames, expected)  # training frames: the reference's float32 ops, exactly
    proprio = raw.astype(np.float64)  # the simulator's proprio is float64: the reference stays in float64
    np.testing.assert_array_equal(
        normalize(proprio, stats), np.clip(2 * (proprio - lo64) / (hi64 - lo64 + 1e-8) - 1, -1, 1)
    )
    actions = np.random.default_rng(2).uniform(-1, 1, (8, 2)).astype(np.float32)  # the head's float32 output
    np.testing.assert_array_equal(
        unnormalize(actions, stats), (0.5 * (actions + 1) * (hi64 - lo64 + 1e-8) + lo64).astype(np.float32)
    )


def test_normalize_round_trip_in_numpy_torch_and_tf() -> None:
    rng = np.random.default_rng(0)
    raw = np.stack([rng.uniform(-0.5, 0.5, 50), rng.uniform(0, 2, 50), rng.uniform(-3, 3, 50)], 1).astype(np.float32)
    normalized = normalize(raw, STATS)
    assert np.abs(normalized[:, :2]).max() <= 1.0
    np.testing.assert_array_equal(normalized[:, 2], 0.0)  # min == max -> 0 (the reference's unused-dim rule)
    np.testing.assert_allclose(unnormalize(normalized, STATS)[:, :2], raw[:, :2], atol=1e-5)
    torch.testing.assert_close(normalize(torch.from_numpy(raw), STATS), torch.from_numpy(normalized))
    np.testing.assert_allclose(
        normalize_tf(tf.constant(raw), STATS, NormalizationType.BOUNDS_Q99).numpy(), normalized, atol=1e-6
    )
    outside = np.array([[2.0, -5.0, 1.0]], np.float32)
    np.testing.assert_array_equal(normalize(outside, STATS)[0, :2], [1.0, -1.0])  # clipped
    unmasked = {**STATS, "min": [-1.0, -1.0, 0.0], "max": [1.0, 3.0, 2.0]}
    np.testing.assert_array_equal(normalize(outside, unmasked)[0, 2], 1.0)  # unmasked dims pass through


def test_chunk_indices_at_episode_ends() -> None:
    action = tf.reshape(tf.range(10, dtype=tf.float32), [10, 1])
    chunks, frames = chunk_actions(action, future=7, drop_last_chunk_frames=True)
    assert frames.numpy().tolist() == [0, 1, 2]  # the last 7 frames are not current frames (KEEP)
    assert chunks.numpy()[:, :, 0].tolist() == [list(range(t, t + 8)) for t in range(3)]
    chunks, frames = chunk_actions(action, future=7, drop_last_chunk_frames=False)
    assert len(frames.numpy()) == 10
    assert chunks.numpy()[9, :, 0].tolist() == [9.0] * 8  # clamped to the last action
    assert chunks.numpy()[5, :, 0].tolist() == [5, 6, 7, 8, 9, 9, 9, 9]
    short, frames = chunk_actions(action[:5], future=7, drop_last_chunk_frames=True)
    assert frames.numpy().size == 0 and short.numpy().shape == (0, 8, 1)


def test_libero_gripper_and_proprio_standardisation() -> None:
    state = tf.constant(np.arange(16, dtype=np.float32).reshape(2, 8))
    steps = {"action": tf.constant([[0.1] * 6 + [-1.0], [0.2] * 6 + [1.0]]), "observation": {"state": state}}
    out = libero(steps)
    assert out["action"].numpy()[:, 6].tolist() == [1.0, 0.0]  # -1 open -> 1, +1 close -> 0
    np.testing.assert_array_equal(out["observation"]["proprio"].numpy(), state.numpy()[:, [0, 1, 2, 3, 4, 5, 6, 7]])
    assert out["observation"]["proprio"].shape == (2, 8)


def test_augmentation_stays_within_its_bounds() -> None:
    gray = tf.fill([224, 224, 3], tf.constant(128, tf.uint8))
    values = [float(tf.reduce_mean(tf.cast(augment_image(gray, tf.constant([s, 1])), tf.float32))) for s in range(40)]
    # on a gray image only brightness acts: +-0.2 of full range (51 levels)
    assert max(abs(v - 128) for v in values) <= 52 and max(abs(v - 128) for v in values) > 25
    ramp = tf.cast(tf.tile(tf.range(224)[None, :, None], [224, 1, 3]), tf.uint8)
    lefts = []
    for seed in range(40):
        out = augment_image(ramp, tf.constant([seed, 2])).numpy().astype(np.float32)
        lefts.append(out[112, 0].mean())
        assert out.shape == (224, 224, 3)
    # the crop starts within [0, 1 - sqrt(0.9)] of the width (~5.5 px of 224), then colour jitter rescales it
    assert min(lefts) >= 0 and np.std(lefts) > 0
    augmented = augment_image(ramp, tf.constant([7, 7])).numpy()
    np.testing.assert_array_equal(augmented, augment_image(ramp, tf.constant([7, 7])).numpy())  # stateless: seeded


def test_center_crop_is_the_central_sqrt_scale_square() -> None:
    ramp = np.tile(np.arange(224, dtype=np.uint8)[None, :, None], (224, 1, 3))
    out = center_crop(ramp).numpy()
    side = np.sqrt(0.9) * 223
    offset = (223 - side) / 2
    assert abs(float(out[100, 0, 0]) - offset) <= 1.0 and abs(float(out[100, -1, 0]) - (offset + side)) <= 1.0
    assert center_crop(np.stack([ramp, ramp])).shape == (2, 224, 224, 3)
    # the reference forms the box in float32 (tf.sqrt(0.9), then offsets): not float64 rounded once
    side32 = np.sqrt(np.float32(0.9))
    offset32 = (np.float32(1) - side32) / np.float32(2)
    assert offset32 != np.float32((1 - np.sqrt(0.9)) / 2)
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    box = np.array([[offset32, offset32, offset32 + side32, offset32 + side32]], np.float32)
    pixels = tf.image.convert_image_dtype(image, tf.float32)[None]
    expected = tf.image.crop_and_resize(pixels, box, [0], (224, 224))
    expected = tf.image.convert_image_dtype(expected, tf.uint8, saturate=True)[0].numpy()
    np.testing.assert_array_equal(center_crop(image).numpy(), expected)


# -- statistics, splits, few-shot ---------------------------------------------------------------------------------
def _raw_arrays(root: Path, name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    import tensorflow_datasets as tfds

    ds = tfds.builder_from_directory(str(root / name / "1.0.0")).as_dataset(split="train", shuffle_files=False)
    actions, proprio, instructions = [], [], []
    for ep in tfds.as_numpy(ds.map(lambda e: e["steps"].batch(10_000).get_single_element())):
        episode_actions = ep["action"].copy()
        episode_actions[:, 6] = 1 - np.clip(episode_actions[:, 6], 0, 1)
        actions.append(episode_actions)
        proprio.append(np.concatenate([ep["observation"]["state"][:, :6], ep["observation"]["state"][:, -2:]], 1))
        instructions.append(ep["language_instruction"][0].decode())
    return np.concatenate(actions), np.concatenate(proprio), instructions


def test_statistics_equal_a_direct_numpy_computation(data_root: Path) -> None:
    _, info = build_frame_stream(stream_cfg(data_root))
    stats = info.statistics[SPATIAL]
    actions, proprio, instructions = _raw_arrays(data_root, SPATIAL)
    for key, values in (("action", actions), ("proprio", proprio)):
        np.testing.assert_allclose(stats[key]["mean"], values.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats[key]["std"], values.std(0), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(stats[key]["q01"], np.quantile(values, 0.01, axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats[key]["q99"], np.quantile(values, 0.99, axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats[key]["min"], values.min(0))
        np.testing.assert_allclose(stats[key]["max"], values.max(0))
    assert stats["action"]["mask"] == [True] * 6 + [False]
    assert stats["num_transitions"] == len(actions) and stats["num_trajectories"] == len(instructions) == 30


def test_default_split_follows_the_reference_rules(data_root: Path) -> None:
    """VLA-Adapter / openvla-oft read `split="train"`: every episode, every frame but the last 7 of each, and report
    the statistics' `num_transitions` as the dataset length; an episode's last chunk is its last 8 actions."""
    dataset = RLDSDataset(data_root, SPATIAL, shuffle_buffer_size=100)
    table, stats = dataset.info.tables[SPATIAL], dataset.dataset_statistics[SPATIAL]
    assert dataset.info.selected_episodes[SPATIAL] == list(range(30))  # nothing held out by default
    assert len(dataset) == stats["num_transitions"] == int(table.lengths.sum())
    assert train_heldout_split(30, 0.05) == (list(range(28)), [28, 29])  # opt-in: the original OpenVLA's train[:95%]
    stream, info = build_frame_stream(stream_cfg(data_root, train=False))
    frames: dict[int, list[dict[str, Any]]] = {}
    for sample in stream.as_numpy_iterator():
        frames.setdefault(int(sample["episode_index"]), []).append(sample)
    assert sorted(frames) == list(range(30)) and info.num_frames == int((table.lengths - 7).sum())
    for episode, samples in frames.items():
        assert [int(s["frame_index"]) for s in samples] == list(range(int(table.lengths[episode]) - 7))
        actions, _ = table.gather([episode])
        last_eight = normalize(actions[-8:], stats["action"])
        np.testing.assert_allclose(samples[-1]["action"], last_eight, atol=1e-6)


def test_few_shot_is_deterministic_per_seed_and_per_task(data_root: Path) -> None:
    _, info_seed1 = build_frame_stream(stream_cfg(data_root, n_shot_episodes=2, seed=1))
    _, info_seed1_again = build_frame_stream(stream_cfg(data_root, n_shot_episodes=2, seed=1))
    _, info_seed2 = build_frame_stream(stream_cfg(data_root, n_shot_episodes=2, seed=2))
    assert info_seed1.selected_episodes == info_seed1_again.selected_episodes != info_seed2.selected_episodes
    tasks = [m["language_instruction"] for m in info_seed1.manifest]
    assert len(tasks) == 20 and all(tasks.count(t) == 2 for t in set(tasks))
    # statistics of the subset only
    table = info_seed1.tables[SPATIAL]
    actions, _ = table.gather(info_seed1.selected_episodes[SPATIAL])
    np.testing.assert_allclose(info_seed1.statistics[SPATIAL]["action"]["mean"], actions.mean(0), rtol=1e-5, atol=1e-6)
    assert info_seed1.statistics[SPATIAL]["num_trajectories"] == 20
    with pytest.raises(ValueError, match="--n_shot_episodes 3: task"):  # some tasks lost an episode to held-out
        build_frame_stream(stream_cfg(data_root, n_shot_episodes=3, heldout_episode_fraction=0.05))
    with pytest.raises(ValueError, match="only 1 training"):
        select_few_shot(table, [0, 3], 2, seed=0)


# -- streams -----------------------------------------------------------------------------------------------------
def _signature(sample: dict[str, Any]) -> tuple[Any, ...]:
    return (int(sample["episode_index"]), int(sample["frame_index"]), sample["images"].tobytes())


def test_streams_are_deterministic_when_seeded(data_root: Path) -> None:
    cfg = stream_cfg(data_root, image_aug=True, seed=5)
    first, again = take(cfg, 40), take(cfg, 40)
    assert [_signature(s) for s in first] == [_signature(s) for s in again]
    other = take(stream_cfg(data_root, image_aug=True, seed=6), 40)
    assert [_signature(s) for s in first] != [_signature(s) for s in other]
    sample = first[0]
    assert sample["images"].shape == (2, 224, 224, 3) and sample["images"].dtype == np.uint8
    assert sample["action"].shape == (8, 7) and sample["proprio"].shape == (8,)
    assert np.abs(sample["action"]).max() <= 1.0
    # the stream is shuffled: not the episodes' natural frame order
    frames = [(int(s["episode_index"]), int(s["frame_index"])) for s in first]
    assert frames != sorted(frames)


def test_sequential_and_parallel_pipelines_yield_the_same_samples(data_root: Path) -> None:
    """Parallelism is a speed knob only: the benchmark's naive pipeline must see the training stream's samples."""
    parallel = take(stream_cfg(data_root, image_aug=True, seed=3), 30)
    sequential = take(stream_cfg(data_root, image_aug=True, seed=3, num_parallel_calls=1, prefetch=False), 30)
    assert [_signature(s) for s in sequential] == [_signature(s) for s in parallel]
    with pytest.raises(ValueError, match="num_parallel_calls"):
        build_frame_stream(stream_cfg(data_root, num_parallel_calls=0))


def test_restart_at_a_sample_continues_the_same_sequence(data_root: Path) -> None:
    cfg = stream_cfg(data_root, image_aug=True, seed=9)
    full = take(cfg, 60)
    resumed = take(stream_cfg(data_root, image_aug=True, seed=9, start_sample=35), 25)
    assert [_signature(s) for s in resumed] == [_signature(s) for s in full[35:]]
    assert [int(s["sample_index"]) for s in resumed] == list(range(35, 60))


def test_ddp_ranks_read_disjoint_shards_with_different_seeds(data_root: Path) -> None:
    per_rank = []
    for rank in range(2):
        stream, info = build_frame_stream(stream_cfg(data_root, rank=rank, world_size=2, seed=3))
        seen = {int(s["episode_index"]) for s in stream.take(300).as_numpy_iterator()}
        assert seen <= set(info.rank_episodes[SPATIAL])
        per_rank.append(set(info.rank_episodes[SPATIAL]))
    assert per_rank[0].isdisjoint(per_rank[1])
    assert per_rank[0] | per_rank[1] == set(info.selected_episodes[SPATIAL])
    with pytest.raises(ValueError, match="rank 2 of 3"):
        build_frame_stream(stream_cfg(data_root, rank=2, world_size=3, n_shot_episodes=1, heldout_episode_fraction=0.9))


def test_eval_stream_reads_heldout_episodes_once_in_order(data_root: Path) -> None:
    heldout = {"use_heldout_episodes": True, "heldout_episode_fraction": 0.05}
    stream, info = build_frame_stream(stream_cfg(data_root, train=False, center_crop=True, **heldout))
    samples = list(stream.as_numpy_iterator())
    assert {int(s["episode_index"]) for s in samples} == set(info.selected_episodes[SPATIAL]) == {28, 29}
    assert len(samples) == info.num_frames
    order = [(int(s["episode_index"]), int(s["frame_index"])) for s in samples]
    assert order == sorted(order)


def test_mixture_samples_every_member_with_its_own_statistics(data_root: Path) -> None:
    MIXTURES["test_spatial_goal"] = [(SPATIAL, 1.0), (GOAL, 1.0)]
    try:
        stream, info = build_frame_stream(stream_cfg(data_root, dataset_name="test_spatial_goal", seed=4))
        names = [s["dataset_name"].decode() for s in stream.take(200).as_numpy_iterator()]
    finally:
        del MIXTURES["test_spatial_goal"]
    assert set(info.statistics) == {SPATIAL, GOAL}
    assert names.count(SPATIAL) > 20 and names.count(GOAL) > 20


def test_episode_tables_are_cached_by_content(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_frame_stream(stream_cfg(data_root))
    calls = []
    real_scan = episodes_module._scan
    monkeypatch.setattr(episodes_module, "_scan", lambda *args: calls.append(1) or real_scan(*args))
    build_frame_stream(stream_cfg(data_root))
    assert calls == []  # served from the cache
    build_frame_stream(stream_cfg(data_root, use_cache=False))
    assert calls == [1]


def test_missing_dataset_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--data_root_dir"):
        build_frame_stream(stream_cfg(tmp_path))
    with pytest.raises(ValueError, match="unknown --dataset_name"):
        build_frame_stream(stream_cfg(tmp_path, dataset_name="libero_90"))


# -- torch side ---------------------------------------------------------------------------------------------------
def test_batch_transform_and_collator(data_root: Path, tiny_assets: tuple[Path, Path]) -> None:
    tokenizer = load_tokenizer(tiny_assets[1])
    dataset = RLDSDataset(
        data_root, SPATIAL, RLDSBatchTransform(tokenizer), shuffle_buffer_size=100, num_images=2, image_aug=True
    )
    samples = [s for _, s in zip(range(6), dataset, strict=False)]
    batch = PaddedCollatorForActionPrediction(tokenizer.pad_token_id)(samples)
    size = len(samples)
    assert len(batch) == size
    assert batch.pixel_values.shape == (size, 12, 224, 224) and batch.pixel_values.dtype == torch.float32
    assert batch.actions.shape == (size, 8, 7) and batch.proprio.shape == (size, 8)
    assert batch.input_ids.shape == batch.attention_mask.shape == batch.query_mask.shape
    assert batch.query_mask.dtype == torch.bool and torch.all(batch.query_mask.sum(1) == 64)
    for row in range(size):
        length = int(batch.attention_mask[row].sum())
        assert torch.all(batch.query_mask[row, length - 64 : length])  # queries are the last real tokens
    assert float(batch.pixel_values.min()) > -3 and float(batch.pixel_values.max()) < 3
