"""Synthetic LIBERO RLDS data: exact feature spec, consistent dynamics, vision-dependent and deterministic content."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from prismatic.synthetic import rlds_writer
from prismatic.synthetic.controller import MAX_POS_ACTION, MAX_ROT_ACTION, POS_SCALE, ROT_SCALE
from prismatic.synthetic.episodes import EpisodeRequest, generate_episode
from prismatic.synthetic.render import AGENT_CAMERA, make_table_texture, render_background, render_scene
from prismatic.synthetic.rlds_writer import SyntheticSuiteSpec, write_synthetic_suite
from prismatic.synthetic.world import SUITES, TABLE_Z, make_entity
from prismatic.util.import_safety import import_tensorflow

from conftest import REPO_ROOT, run_python

SPATIAL = "libero_spatial_no_noops"
GOAL = "libero_goal_no_noops"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic_libero")
    write_synthetic_suite(root, SyntheticSuiteSpec(SPATIAL, episodes_per_task=2, seed=0), num_workers=2)
    return root


def read_episodes(dataset_dir: Path) -> list[dict[str, Any]]:
    """All episodes of a written dataset as numpy, read back through `tfds.builder_from_directory`."""
    import_tensorflow()
    import tensorflow_datasets as tfds

    ds = tfds.builder_from_directory(str(dataset_dir / "1.0.0")).as_dataset(split="train")
    return list(
        tfds.as_numpy(
            ds.map(
                lambda ep: {
                    "steps": ep["steps"].batch(10_000).get_single_element(),
                    "episode_metadata": ep["episode_metadata"],
                }
            )
        )
    )


@pytest.fixture(scope="module")
def spatial_episodes(data_root: Path) -> list[dict[str, Any]]:
    return read_episodes(data_root / SPATIAL)


def test_layout_and_feature_spec_match_the_real_libero_rlds(data_root: Path) -> None:
    import_tensorflow()
    import tensorflow as tf
    import tensorflow_datasets as tfds

    version_dir = data_root / SPATIAL / "1.0.0"
    assert (version_dir / "dataset_info.json").is_file() and (version_dir / "features.json").is_file()
    assert list(version_dir.glob(f"{SPATIAL}-train.tfrecord-*"))
    builder = tfds.builder(SPATIAL, data_dir=str(data_root))  # how the training pipeline opens it
    assert builder.info.splits["train"].num_examples == 20
    spec = builder.info.features
    steps = spec["steps"]
    obs = steps["observation"]
    for camera in ("image", "wrist_image"):
        assert isinstance(obs[camera], tfds.features.Image)
        assert obs[camera].shape == (256, 256, 3) and obs[camera].dtype == tf.uint8
        assert obs[camera].encoding_format == "jpeg"
    assert (obs["state"].shape, obs["state"].dtype) == ((8,), tf.float32)
    assert (obs["joint_state"].shape, obs["joint_state"].dtype) == ((7,), tf.float32)
    assert (steps["action"].shape, steps["action"].dtype) == ((7,), tf.float32)
    for key, dtype in (
        ("reward", tf.float32),
        ("discount", tf.float32),
        ("is_first", tf.bool),
        ("is_last", tf.bool),
        ("is_terminal", tf.bool),
    ):
        assert steps[key].shape == () and steps[key].dtype == dtype, key
    assert isinstance(steps["language_instruction"], tfds.features.Text)
    assert isinstance(spec["episode_metadata"]["file_path"], tfds.features.Text)
    assert set(steps.keys()) == {
        "observation",
        "action",
        "reward",
        "discount",
        "is_first",
        "is_last",
        "is_terminal",
        "language_instruction",
    }


def test_episode_flags_and_value_ranges(spatial_episodes: list[dict[str, Any]]) -> None:
    for ep in spatial_episodes:
        steps = ep["steps"]
        num_steps = len(steps["action"])
        assert 40 <= num_steps <= 200
        assert steps["is_first"].tolist() == [True] + [False] * (num_steps - 1)
        assert steps["is_last"].tolist() == [False] * (num_steps - 1) + [True]
        assert steps["is_terminal"].tolist() == steps["is_last"].tolist()
        assert steps["reward"].tolist() == [0.0] * (num_steps - 1) + [1.0]
        assert np.all(steps["discount"] == 1.0)
        actions = steps["action"]
        assert np.abs(actions[:, :3]).max() <= MAX_POS_ACTION + 1e-6
        assert np.abs(actions[:, 3:6]).max() <= MAX_ROT_ACTION + 1e-6
        assert set(np.unique(actions[:, 6]).tolist()) == {-1.0, 1.0}
        closes = np.flatnonzero(np.diff(actions[:, 6]) > 0)
        opens = np.flatnonzero(np.diff(actions[:, 6]) < 0)
        assert len(closes) == 1 and len(opens) == 1 and closes[0] < opens[0]  # grasp, then release
        images = steps["observation"]["image"]
        assert images.shape == (num_steps, 256, 256, 3) and images.dtype == np.uint8
        assert ep["episode_metadata"]["file_path"].decode().endswith("_demo.hdf5")


def test_state_is_integrated_from_the_actions(spatial_episodes: list[dict[str, Any]]) -> None:
    """State t+1 = state t moved by the action at t (LIBERO-like scale); gripper qpos follows the command."""
    for ep in spatial_episodes:
        state, action = ep["steps"]["observation"]["state"], ep["steps"]["action"]
        moved = state[1:, :3] - state[:-1, :3]
        np.testing.assert_allclose(moved[:, :2], POS_SCALE * action[:-1, :2], atol=1e-5)
        free_z = state[1:, 2] > TABLE_Z + 0.006  # z is clamped just above the table
        np.testing.assert_allclose(moved[free_z, 2], POS_SCALE * action[:-1, 2][free_z], atol=1e-5)
        np.testing.assert_allclose(state[:, 6], -state[:, 7], atol=1e-7)
        assert state[:, 6].max() == pytest.approx(0.039, abs=1e-6) and state[:, 6].min() < 0.03
        assert np.all(np.linalg.norm(state[:, 3:6], axis=1) > 2.5)  # gripper points down (axis-angle near pi)
        assert np.abs(moved).max() <= POS_SCALE * MAX_POS_ACTION + 1e-5
        assert np.abs(np.diff(ep["steps"]["observation"]["joint_state"], axis=0)).max() < 0.1
    assert ROT_SCALE > 0


def test_ten_distinct_tasks_per_suite() -> None:
    for name, tasks in SUITES.items():
        instructions = [t.instruction for t in tasks]
        assert len(instructions) == 10 and len(set(instructions)) == 10, name
        assert all(i == i.lower() and not i.endswith(".") for i in instructions), name


def test_instruction_alone_does_not_determine_the_actions(spatial_episodes: list[dict[str, Any]]) -> None:
    by_task: dict[bytes, list[dict[str, Any]]] = {}
    for ep in spatial_episodes:
        by_task.setdefault(ep["steps"]["language_instruction"][0], []).append(ep)
    assert len(by_task) == 10 and all(len(v) == 2 for v in by_task.values())
    for first, second in by_task.values():
        a1, a2 = first["steps"]["action"], second["steps"]["action"]
        common_len = min(len(a1), len(a2))
        # Same instruction, different object and target positions: different motions...
        assert np.abs(a1[:common_len, :3] - a2[:common_len, :3]).mean() > 0.1
        # ...and the pixels show the difference.
        img1 = first["steps"]["observation"]["image"][0].astype(np.float32)
        img2 = second["steps"]["observation"]["image"][0].astype(np.float32)
        assert np.abs(img1 - img2).mean() > 5.0


def test_pixels_show_where_objects_are() -> None:
    rng = np.random.default_rng(0)
    texture = make_table_texture(rng, 1.0)
    background = render_background(AGENT_CAMERA, texture, (180, 180, 180))
    for xy in ((0.1, -0.15), (-0.1, 0.2)):
        bowl = make_entity("black bowl", np.array([*xy, TABLE_Z]), 0.0)
        with_bowl = render_scene(AGENT_CAMERA, background, [bowl], 1.0).astype(np.float32)
        empty = render_scene(AGENT_CAMERA, background, [], 1.0).astype(np.float32)
        changed = np.argwhere(np.abs(with_bowl - empty).sum(-1) > 60)
        uv, _ = AGENT_CAMERA.project(np.array([[*xy, TABLE_Z + bowl.size[2]]]))
        pixel_col, pixel_row = uv[0]
        centroid = changed.mean(0)[::-1]  # (row, col) -> (col, row), i.e. (u, v)
        assert np.linalg.norm(centroid - [pixel_col, pixel_row]) < 6, (centroid, (pixel_col, pixel_row))
        assert with_bowl[int(pixel_row), int(pixel_col)].mean() < 60  # a black bowl is dark where it projects


def test_episodes_are_deterministic_for_a_seed() -> None:
    req = EpisodeRequest(GOAL, task_index=3, episode_index=1, seed=5)
    first, again = generate_episode(req), generate_episode(req)
    other = generate_episode(EpisodeRequest(GOAL, task_index=3, episode_index=1, seed=6))
    assert len(first["steps"]) == len(again["steps"])
    for s1, s2 in zip(first["steps"], again["steps"], strict=True):
        assert s1["observation"]["image"] == s2["observation"]["image"]
        assert s1["observation"]["wrist_image"] == s2["observation"]["wrist_image"]
        np.testing.assert_array_equal(s1["action"], s2["action"])
        np.testing.assert_array_equal(s1["observation"]["state"], s2["observation"]["state"])
    common_len = min(len(first["steps"]), len(other["steps"]))
    assert any(not np.array_equal(first["steps"][t]["action"], other["steps"][t]["action"]) for t in range(common_len))


def test_written_datasets_are_identical_for_the_same_seed(tmp_path: Path) -> None:
    spec = SyntheticSuiteSpec(GOAL, episodes_per_task=1, seed=3)
    write_synthetic_suite(tmp_path / "a", spec, num_workers=1)
    write_synthetic_suite(tmp_path / "b", spec, num_workers=2)
    eps_a, eps_b = read_episodes(tmp_path / "a" / GOAL), read_episodes(tmp_path / "b" / GOAL)
    assert len(eps_a) == len(eps_b) == 10
    key = lambda ep: ep["steps"]["language_instruction"][0]  # noqa: E731
    for ea, eb in zip(sorted(eps_a, key=key), sorted(eps_b, key=key), strict=True):
        np.testing.assert_array_equal(ea["steps"]["action"], eb["steps"]["action"])
        np.testing.assert_array_equal(ea["steps"]["observation"]["image"], eb["steps"]["observation"]["image"])
        np.testing.assert_array_equal(
            ea["steps"]["observation"]["wrist_image"], eb["steps"]["observation"]["wrist_image"]
        )


def test_rewrite_is_idempotent_and_protects_other_data(data_root: Path) -> None:
    same = SyntheticSuiteSpec(SPATIAL, episodes_per_task=2, seed=0)
    info = data_root / SPATIAL / "1.0.0" / "dataset_info.json"
    stamp = info.stat().st_mtime_ns
    assert write_synthetic_suite(data_root, same) == (data_root / SPATIAL, False)
    assert info.stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="--overwrite True"):
        write_synthetic_suite(data_root, SyntheticSuiteSpec(SPATIAL, episodes_per_task=3, seed=0))
    with pytest.raises(ValueError, match="unknown suite"):
        write_synthetic_suite(data_root, SyntheticSuiteSpec("libero_90_no_noops", 1, 0))


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = rlds_writer.generate_episode

    def flaky(req: EpisodeRequest) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("renderer crashed")
        return real(req)

    monkeypatch.setattr(rlds_writer, "generate_episode", flaky)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        write_synthetic_suite(tmp_path, SyntheticSuiteSpec(GOAL, 1, 0), num_workers=1)
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_a_suite_and_reports_it(tmp_path: Path) -> None:
    script = str(REPO_ROOT / "vla-scripts" / "make_synthetic_libero.py")
    args = [
        script,
        "--data_root_dir",
        str(tmp_path),
        "--episodes_per_task",
        "1",
        "--seed",
        "1",
        "--suites",
        f"[{GOAL}]",
        "--num_workers",
        "1",
    ]
    proc = run_python(args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{GOAL}: 10 episodes" in proc.stdout
    meta = json.loads((tmp_path / GOAL / "1.0.0" / "metadata.json").read_text())
    assert meta["seed"] == 1 and meta["episodes_per_task"] == 1 and meta["num_transitions"] > 0
    assert not (tmp_path / "libero_spatial_no_noops").exists()
    again = run_python(args)
    assert again.returncode == 0 and "up to date" in again.stdout
    bad = run_python([script, "--data_root_dir", str(tmp_path), "--episodes_per_task", "0"])
    assert bad.returncode == 2 and "--episodes_per_task" in bad.stderr


def test_a_task_subset_holds_the_same_episodes_as_the_full_suite(
    tmp_path: Path, spatial_episodes: list[dict[str, Any]]
) -> None:
    """`task_ids` (e.g. tasks held out of training): only those tasks, each episode identical to the full suite's."""
    spec = SyntheticSuiteSpec(SPATIAL, episodes_per_task=2, seed=0, task_ids=[8, 9])
    write_synthetic_suite(tmp_path, spec, num_workers=1)
    subset = read_episodes(tmp_path / SPATIAL)
    wanted = {SUITES[SPATIAL][task].instruction.encode() for task in (8, 9)}
    assert len(subset) == 4 and {ep["steps"]["language_instruction"][0] for ep in subset} == wanted
    full = [ep["steps"]["action"] for ep in spatial_episodes]
    for episode in subset:
        actions = episode["steps"]["action"]
        assert any(twin.shape == actions.shape and np.array_equal(twin, actions) for twin in full)
    assert json.loads((tmp_path / SPATIAL / "1.0.0" / "metadata.json").read_text())["task_ids"] == [8, 9]
    with pytest.raises(ValueError, match=r"has tasks 0\.\.9"):
        write_synthetic_suite(tmp_path / "bad", SyntheticSuiteSpec(SPATIAL, 1, 0, task_ids=[10]))
