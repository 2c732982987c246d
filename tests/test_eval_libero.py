"""The LIBERO rollout loop against a stand-in environment with LIBERO's interface, and the real-simulator smoke test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.fake_libero import EEF_POS, EEF_QUAT, GRIPPER_QPOS

from prismatic.eval.policy_adapter import ChunkPolicy
from prismatic.eval.protocol import (
    NUM_STEPS_WAIT,
    WAIT_ACTION,
    Protocol,
    postprocess_actions,
    quat2axisangle,
    statistics_key,
)
from prismatic.eval.runner import EPISODES_FILE, RESULTS_FILE, EvalSettings, evaluate

FACTORY = "helpers.fake_libero:FakeLiberoFactory"
GRIPPERS = [0.9, 0.9, 0.1, 0.1, 0.9, 0.1, 0.1, 0.1]  # model convention: 1 open, 0 closed


class RecordingPredictor:
    """Stands in for ActionPredictor: records what the policy sees, returns a fixed raw chunk per sample."""

    def __init__(self) -> None:
        self.images: list[list[np.ndarray]] = []
        self.states: list[np.ndarray] = []
        self.instructions: list[str] = []
        self.batch_sizes: list[int] = []

    def predict(self, images: Any, instructions: Any, proprio: Any) -> np.ndarray:
        self.images.extend(images)
        self.states.extend(np.asarray(proprio))
        self.instructions.extend(instructions)
        self.batch_sizes.append(len(instructions))
        chunk = np.zeros((8, 7))
        chunk[:, 0] = np.arange(8) / 10  # step index, to check the open-loop order
        chunk[:, 6] = GRIPPERS
        return np.repeat(chunk[None], len(instructions), axis=0)


def settings(tmp_path: Path, scripts: dict[int, list[dict[str, Any]]], workers: int, **protocol: Any) -> EvalSettings:
    return EvalSettings(
        protocol=Protocol(
            suite="libero_spatial", num_trials_per_task=len(next(iter(scripts.values()))), max_steps=30, **protocol
        ),
        results_dir=tmp_path / "results",
        num_workers=workers,
        env_factory=FACTORY,
        env_factory_kwargs={"scripts": {str(k): v for k, v in scripts.items()}, "trace_dir": str(tmp_path)},
    )


def trace(tmp_path: Path, task: int, trial: int) -> list[list[float]]:
    lines = (tmp_path / f"task{task}_trial{trial}.jsonl").read_text().splitlines()
    return [json.loads(line)["action"] for line in lines]


def test_protocol_conversions() -> None:
    np.testing.assert_allclose(quat2axisangle(EEF_QUAT), [0.0, 0.0, 0.5], atol=1e-12)
    assert quat2axisangle(np.array([0.0, 0.0, 0.0, 1.0])).tolist() == [0.0, 0.0, 0.0]
    actions = np.array([[0.3, 0, 0, 0, 0, 0, 0.9], [0.3, 0, 0, 0, 0, 0, 0.2]])
    out = postprocess_actions(actions)
    assert out[:, 6].tolist() == [-1.0, 1.0]  # open -> -1, closed -> +1 (LIBERO)
    np.testing.assert_array_equal(out[:, :6], actions[:, :6])
    assert Protocol("libero_10").episode_steps == 520 and Protocol("libero_spatial").episode_steps == 220


def test_rollout_loop_in_process(tmp_path: Path) -> None:
    scripts = {0: [{"succeed_after": 5}], 1: [{}], 2: [{"raise_at": 3}]}
    predictor = RecordingPredictor()
    results = evaluate(settings(tmp_path, scripts, workers=0), ChunkPolicy(predictor, 2, center_crop=True))

    # observation handling: rotated back upright (markers top-left), 224px, proprio built from eef pos/quat/qpos
    third_person, wrist = predictor.images[0]
    assert third_person.shape == wrist.shape == (224, 224, 3)
    assert third_person[5, 5].tolist()[0] > 200 and third_person[-5, -5][0] < 150  # red marker top-left
    assert wrist[5, 5][2] > 200 and wrist[5, 5][0] < 80  # blue marker top-left
    expected_state = np.concatenate([EEF_POS + 0.001 * NUM_STEPS_WAIT, [0, 0, 0.5], GRIPPER_QPOS])
    np.testing.assert_allclose(predictor.states[0], expected_state, atol=1e-6)
    assert predictor.instructions[0] == "fake task 0 of libero_spatial"

    # actions: 10 wait steps, then each chunk of 8 executed open-loop in order, gripper binarised and inverted
    executed = trace(tmp_path, 1, 0)
    assert executed[:NUM_STEPS_WAIT] == [WAIT_ACTION] * NUM_STEPS_WAIT
    policy_steps = executed[NUM_STEPS_WAIT:]
    assert len(policy_steps) == 30  # max_steps for a task that never succeeds
    assert [a[0] for a in policy_steps[:8]] == pytest.approx([i / 10 for i in range(8)])
    assert [a[0] for a in policy_steps[8:16]] == pytest.approx([i / 10 for i in range(8)])  # a new chunk
    assert [a[6] for a in policy_steps[:8]] == [-1.0 if g > 0.5 else 1.0 for g in GRIPPERS]

    # success counting and errors
    per_task = results["per_task"]
    assert per_task["0"]["successes"] == 1 and per_task["1"]["successes"] == 0
    assert per_task["2"]["errors"] == 1 and per_task["2"]["successes"] == 0
    # an errored episode is an error, not a failure: out of the success rate, named, and played again next run
    assert results["total"] == {"trials": 2, "successes": 1, "success_rate": pytest.approx(1 / 2), "errors": 1}
    assert results["first_error"]["task_id"] == 2 and "simulated physics failure" in results["first_error"]["error"]
    rows = [json.loads(line) for line in (tmp_path / "results" / EPISODES_FILE).read_text().splitlines()]
    failing = next(r for r in rows if r["task_id"] == 2)
    assert "simulated physics failure" in failing["error"]
    # success needs env step >= 5 (wait steps count) and a closing command: the chunk's 3rd action
    assert next(r for r in rows if r["task_id"] == 0)["steps"] == 3
    saved = json.loads((tmp_path / "results" / RESULTS_FILE).read_text())
    assert saved["protocol"]["num_steps_wait"] == 10 and saved["protocol"]["seed"] == 7
    assert saved["protocol"]["episode_steps"] == 30 and "torch" in saved["versions"]
    played = {task: len(trace(tmp_path, task, 0)) for task in (0, 1)}
    fixed = {0: [{"succeed_after": 5}], 1: [{}], 2: [{"succeed_after": 5}]}  # the environment works again
    again = evaluate(settings(tmp_path, fixed, workers=0), ChunkPolicy(RecordingPredictor(), 2, center_crop=True))
    assert again["total"] == {"trials": 3, "successes": 2, "success_rate": pytest.approx(2 / 3), "errors": 0}
    assert again["first_error"] is None
    assert {task: len(trace(tmp_path, task, 0)) for task in (0, 1)} == played  # only the errored one played again


@pytest.mark.multiprocess
def test_parallel_workers_batch_queries_resume_and_survive_a_crash(tmp_path: Path) -> None:
    scripts = {0: [{"succeed_after": 9}, {"succeed_after": 9}, {}], 1: [{}, {"exit_at": 12}, {"succeed_after": 20}]}
    predictor = RecordingPredictor()
    policy = ChunkPolicy(predictor, 2, center_crop=False)
    results = evaluate(settings(tmp_path, scripts, workers=2), policy)
    assert (results["total"]["trials"], results["total"]["successes"], results["total"]["errors"]) == (5, 3, 1)
    rows = {
        (r["task_id"], r["trial"]): r
        for r in map(json.loads, (tmp_path / "results" / EPISODES_FILE).read_text().splitlines())
    }
    assert "worker process died" in rows[(1, 1)]["error"]
    assert max(predictor.batch_sizes) == 2  # both workers' requests answered by one call

    # interrupt: forget two episodes (and leave a torn last line), then resume: only those are played again
    lines = (tmp_path / "results" / EPISODES_FILE).read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["trial"] != 2]
    (tmp_path / "results" / EPISODES_FILE).write_text("\n".join(kept) + '\n{"task_id": 0, "tri')
    for task in (0, 1):
        (tmp_path / f"task{task}_trial2.jsonl").unlink()
    (tmp_path / "task0_trial0.jsonl").unlink()
    resumed = evaluate(settings(tmp_path, scripts, workers=2), policy)
    # the worker crash is played again (and crashes again): still an error, never a failure
    assert (resumed["total"]["trials"], resumed["total"]["successes"], resumed["total"]["errors"]) == (5, 3, 1)
    assert (tmp_path / "task0_trial2.jsonl").is_file() and (tmp_path / "task1_trial2.jsonl").is_file()
    assert not (tmp_path / "task0_trial0.jsonl").exists()  # finished episodes are not replayed


def test_task_subset_and_bad_task_ids(tmp_path: Path) -> None:
    scripts = {0: [{}], 1: [{"succeed_after": 1}], 2: [{}]}
    results = evaluate(
        settings(tmp_path, scripts, workers=0, task_ids=(1,)), ChunkPolicy(RecordingPredictor(), 2, False)
    )
    assert list(results["per_task"]) == ["1"] and results["total"]["success_rate"] == 1.0
    with pytest.raises(ValueError, match="--task_ids"):
        evaluate(
            settings(tmp_path / "x", scripts, workers=0, task_ids=(5,)), ChunkPolicy(RecordingPredictor(), 2, False)
        )


def test_real_libero_smoke(tmp_path: Path) -> None:
    """One real LIBERO step when the simulator and its assets exist; otherwise a clear skip."""
    from prismatic.eval.libero_env import LiberoEnvFactory, configure_libero

    try:
        configure_libero(config_dir=tmp_path / "libero_config")
    except (ModuleNotFoundError, FileNotFoundError) as err:
        pytest.skip(f"real LIBERO unavailable: {err}")
    factory = LiberoEnvFactory()
    handle = factory.make("libero_spatial", 0, 256, 0)
    obs = handle.env.set_init_state(handle.initial_states[0])
    assert obs["agentview_image"].shape == (256, 256, 3)
    obs, _, done, _ = handle.env.step(list(WAIT_ACTION))
    assert not done
    handle.env.close()


def test_vla_adapter_evaluation_flags(tmp_path: Path, tiny_assets: tuple[Path, Path]) -> None:
    """VLA-Adapter's evaluation command line runs as is; a flag contradicting the checkpoint stops with the reason."""
    import torch

    from prismatic.models.loaders import PolicySpec, load_prismatic_vlm
    from prismatic.models.policy import VLAAdapterPolicy
    from prismatic.models.savers import save_policy
    from prismatic.vla.constants import LIBERO_CONSTANTS

    from conftest import REPO_ROOT, run_python

    torch.manual_seed(0)
    policy = VLAAdapterPolicy(load_prismatic_vlm(tiny_assets[0], num_images=2), LIBERO_CONSTANTS)
    stats = {
        "libero_spatial_no_noops": {
            "action": {"q01": [-0.5] * 6 + [0.0], "q99": [0.5] * 6 + [1.0], "mask": [True] * 6 + [False]},
            "proprio": {"q01": [-1.0] * 8, "q99": [1.0] * 8},
        }
    }
    ckpt = save_policy(tmp_path / "LIBERO-Spatial-Pro", policy, PolicySpec(), tiny_assets[1], stats)
    reference_flags = [
        *("--pretrained_checkpoint", str(ckpt), "--task_suite_name", "libero_spatial"),
        *("--use_proprio", "True", "--num_images_in_input", "2", "--use_film", "False"),
        *("--use_pro_version", "True", "--num_trials_per_task", "1", "--seed", "7"),
    ]
    ours = ["--env_factory", "helpers.fake_libero:CommandLineFakeLiberoFactory", "--num_workers", "0"]
    ours += ["--max_steps", "16", "--results_dir", str(tmp_path / "results")]
    script = str(REPO_ROOT / "vla-scripts" / "eval_libero.py")
    env = {"PYTHONPATH": str(REPO_ROOT / "tests")}
    proc = run_python([script, *reference_flags, *ours], env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((tmp_path / "results" / RESULTS_FILE).read_text())
    assert saved["total"]["trials"] == 2 and saved["protocol"]["num_open_loop_steps"] == 8
    assert saved["setup"]["statistics_key"] == "libero_spatial_no_noops"  # VLA-Adapter's rule: suite, then no_noops
    assert saved["setup"]["num_images_in_input"] == 2 and saved["setup"]["num_workers"] == 0
    assert saved["setup"]["render_backend"] == "egl"
    for flag, value, message in (
        ("--use_pro_version", "False", "--use_pro_version False: "),
        ("--use_proprio", "False", "--use_proprio False: "),
        ("--use_film", "True", "--use_film True (FiLM conditioning) is not implemented"),
    ):
        changed = [*reference_flags]
        changed[changed.index(flag) + 1] = value
        proc = run_python([script, *changed, *ours], env=env)
        last = proc.stderr.strip().splitlines()[-1]
        assert proc.returncode == 2 and last.startswith(f"error: {message}"), proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr


def test_statistics_key_follows_the_reference_rule() -> None:
    assert statistics_key("libero_spatial", ["libero_spatial", "libero_spatial_no_noops"]) == "libero_spatial"
    assert statistics_key("libero_spatial", ["libero_spatial_no_noops", "bridge"]) == "libero_spatial_no_noops"
    assert statistics_key("libero_spatial", ["a", "b"], requested="b") == "b"
    with pytest.raises(ValueError, match="no entry for libero_goal or libero_goal_no_noops"):
        statistics_key("libero_goal", ["libero_spatial_no_noops"])  # a single other entry is not a fallback
    with pytest.raises(ValueError, match="--unnorm_key 'c' is not in"):
        statistics_key("libero_spatial", ["a", "b"], requested="c")


def test_errored_episodes_make_the_command_fail(tmp_path: Path, tiny_assets: tuple[Path, Path]) -> None:
    """An evaluation whose episodes errored exits non-zero with the count and the first error (never a 0% result)."""
    from prismatic.models.loaders import PolicySpec, load_prismatic_vlm
    from prismatic.models.policy import VLAAdapterPolicy
    from prismatic.models.savers import save_policy
    from prismatic.vla.constants import LIBERO_CONSTANTS

    from conftest import REPO_ROOT, run_python

    policy = VLAAdapterPolicy(load_prismatic_vlm(tiny_assets[0], num_images=2), LIBERO_CONSTANTS)
    bounds = {"action": {"q01": [-1.0] * 7, "q99": [1.0] * 7}, "proprio": {"q01": [-1.0] * 8, "q99": [1.0] * 8}}
    ckpt = save_policy(tmp_path / "ckpt", policy, PolicySpec(), tiny_assets[1], {"libero_spatial_no_noops": bounds})
    proc = run_python(
        [
            *(str(REPO_ROOT / "vla-scripts" / "eval_libero.py"), "--pretrained_checkpoint", str(ckpt)),
            *("--env_factory", "helpers.fake_libero:ErroringFakeLiberoFactory", "--num_workers", "0"),
            *("--num_trials_per_task", "1", "--max_steps", "16", "--results_dir", str(tmp_path / "results")),
        ],
        env={"PYTHONPATH": str(REPO_ROOT / "tests")},
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 1 episode(s) errored") and "simulated physics failure" in last
    saved = json.loads((tmp_path / "results" / RESULTS_FILE).read_text())
    assert saved["total"] == {"trials": 0, "successes": 0, "success_rate": None, "errors": 1}
