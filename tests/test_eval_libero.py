"""The LIBERO rollout loop against a stand-in environment with LIBERO's interface, and the real-simulator smoke test."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
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

from conftest import REPO_ROOT, run_python

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


def settings(
    tmp_path: Path,
    scripts: dict[int, list[dict[str, Any]]],
    workers: int,
    episode_timeout_s: float | None = None,
    initial_states_path: Path | None = None,
    **protocol: Any,
) -> EvalSettings:
    return EvalSettings(
        protocol=Protocol(
            suite="libero_spatial", num_trials_per_task=len(next(iter(scripts.values()))), max_steps=30, **protocol
        ),
        results_dir=tmp_path / "results",
        num_workers=workers,
        env_factory=FACTORY,
        env_factory_kwargs={"scripts": {str(k): v for k, v in scripts.items()}, "trace_dir": str(tmp_path)},
        episode_timeout_s=episode_timeout_s,
        initial_states_path=initial_states_path,
    )


def trace(tmp_path: Path, task: int, trial: int) -> list[list[float]]:
    lines = (tmp_path / f"task{task}_trial{trial}.jsonl").read_text().splitlines()
    return [json.loads(line)["action"] for line in lines]


def episode_rows(results_dir: Path) -> list[dict[str, Any]]:
    """Every line of episodes.jsonl (each must be complete JSON)."""
    return [json.loads(line) for line in (results_dir / EPISODES_FILE).read_text().splitlines()]


def live_workers(pids: list[int]) -> list[int]:
    """The processes among `pids` that still run (a zombie waiting for its parent to reap it does not)."""
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def spawned_workers(pid: int) -> list[int]:
    """Evaluation workers (multiprocessing spawn children) below process `pid`."""
    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if "spawn_main" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child.pid)
        except psutil.NoSuchProcess:
            pass
    return found


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_assets: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny VLA-Adapter Pro checkpoint with proprio, 2 images and LIBERO-Spatial statistics (one per module)."""
    import torch

    from prismatic.models.loaders import PolicySpec, load_prismatic_vlm
    from prismatic.models.policy import VLAAdapterPolicy
    from prismatic.models.savers import save_policy
    from prismatic.vla.constants import LIBERO_CONSTANTS

    torch.manual_seed(0)
    policy = VLAAdapterPolicy(load_prismatic_vlm(tiny_assets[0], num_images=2), LIBERO_CONSTANTS)
    stats = {
        "libero_spatial_no_noops": {
            "action": {"q01": [-0.5] * 6 + [0.0], "q99": [0.5] * 6 + [1.0], "mask": [True] * 6 + [False]},
            "proprio": {"q01": [-1.0] * 8, "q99": [1.0] * 8},
        }
    }
    folder = tmp_path_factory.mktemp("eval_checkpoint") / "LIBERO-Spatial-Pro"
    return save_policy(folder, policy, PolicySpec(), tiny_assets[1], stats)


def eval_command(checkpoint: Path, results_dir: Path, factory: str, *flags: str) -> list[str]:
    """eval_libero.py on a stand-in environment (`factory` in tests/helpers/fake_libero.py)."""
    return [
        *(str(REPO_ROOT / "vla-scripts" / "eval_libero.py"), "--pretrained_checkpoint", str(checkpoint)),
        *("--env_factory", f"helpers.fake_libero:{factory}", "--results_dir", str(results_dir)),
        *("--num_trials_per_task", "1", "--max_steps", "16"),
        *flags,
    ]


EVAL_ENV = {"PYTHONPATH": str(REPO_ROOT / "tests")}


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


def test_vla_adapter_evaluation_flags(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """VLA-Adapter's evaluation command line runs as is; a flag contradicting the checkpoint stops with the reason."""
    ckpt = tiny_checkpoint
    reference_flags = [
        *("--pretrained_checkpoint", str(ckpt), "--task_suite_name", "libero_spatial"),
        *("--use_proprio", "True", "--num_images_in_input", "2", "--use_film", "False"),
        *("--use_pro_version", "True", "--num_trials_per_task", "1", "--seed", "7"),
    ]
    ours = ["--env_factory", "helpers.fake_libero:CommandLineFakeLiberoFactory", "--num_workers", "0"]
    ours += ["--max_steps", "16", "--results_dir", str(tmp_path / "results")]
    script = str(REPO_ROOT / "vla-scripts" / "eval_libero.py")
    env = EVAL_ENV
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


def test_errored_episodes_make_the_command_fail(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """An evaluation whose episodes errored exits non-zero with the count and the first error (never a 0% result)."""
    command = eval_command(tiny_checkpoint, tmp_path / "results", "ErroringFakeLiberoFactory", "--num_workers", "0")
    proc = run_python(command, env=EVAL_ENV)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 1 episode(s) errored") and "simulated physics failure" in last
    saved = json.loads((tmp_path / "results" / RESULTS_FILE).read_text())
    assert saved["total"] == {"trials": 0, "successes": 0, "success_rate": None, "errors": 1}
    assert "0/0 = n/a (1 errored)" in proc.stdout  # no episode played to the end: no rate, never "0.0%"
    assert "TOTAL libero_spatial: 0/0 = n/a" in (tmp_path / "results" / "eval.log").read_text()


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("no_such_module:Factory", "--env_factory no_such_module:Factory: cannot import 'no_such_module'"),
        ("helpers.fake_libero:NoSuchFactory", "module 'helpers.fake_libero' has no attribute 'NoSuchFactory'"),
        ("helpers.fake_libero", "--env_factory must look like 'module:attribute'"),
    ],
)
def test_a_wrong_env_factory_stops_before_the_model_loads(
    factory: str, message: str, tmp_path: Path, tiny_checkpoint: Path
) -> None:
    command = eval_command(tiny_checkpoint, tmp_path / "results", "FakeLiberoFactory", "--num_workers", "0")
    command[command.index("--env_factory") + 1] = factory
    proc = run_python(command, env=EVAL_ENV)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and message in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "results").exists()


def test_in_process_mode_renders_before_tensorflow_with_the_chosen_backend(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    """`--num_workers 0`: robosuite's OpenGL renderer segfaults in a process that already holds TensorFlow, and MuJoCo
    reads MUJOCO_GL only at import. The stand-in records both when each environment is made, in a fresh process (this
    test process has TensorFlow loaded); the results record the whole setup."""
    probe_file = tmp_path / "probe.jsonl"
    states_file = tmp_path / "states.json"
    states_file.write_text(
        json.dumps(
            {
                f"fake_task_{task}_of_libero_spatial": {"demo_0": {"success": True, "initial_state": [0, 0]}}
                for task in (0, 1)
            }
        )
    )
    command = eval_command(
        tiny_checkpoint,
        tmp_path / "results",
        "ProbingFakeLiberoFactory",
        *("--num_workers", "0", "--render_backend", "osmesa", "--num_open_loop_steps", "4"),
        *("--episode_timeout_s", "120", "--initial_states_path", str(states_file)),
    )
    proc = run_python(command, env={**EVAL_ENV, "FAKE_LIBERO_PROBE": str(probe_file), "MUJOCO_GL": "egl"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = (json.loads(line) for line in probe_file.read_text().splitlines())
    assert first == {"task_id": 0, "MUJOCO_GL": "osmesa", "tensorflow": False}
    assert second == {"task_id": 1, "MUJOCO_GL": "osmesa", "tensorflow": True}  # the policy's first call loaded it
    setup = json.loads((tmp_path / "results" / RESULTS_FILE).read_text())["setup"]
    assert setup["statistics_key"] == "libero_spatial_no_noops" and setup["num_images_in_input"] == 2
    assert (setup["render_backend"], setup["num_workers"], setup["num_open_loop_steps"]) == ("osmesa", 0, 4)
    assert setup["episode_timeout_s"] == 120.0
    assert setup["initial_states_path"] == str(states_file.resolve())
    assert setup["initial_states_sha256"] == hashlib.sha256(states_file.read_bytes()).hexdigest()


@pytest.mark.multiprocess
def test_sigterm_stops_the_workers_and_a_rerun_resumes(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """SIGTERM to the main process: workers gone within seconds, exit 143 with how many episodes are saved, a valid
    episodes.jsonl, and the same command then plays only the rest."""
    results_dir = tmp_path / "results"
    command = eval_command(
        tiny_checkpoint, results_dir, "SlowFakeLiberoFactory", "--num_workers", "2", "--num_trials_per_task", "6"
    )
    stderr_file = tmp_path / "stderr.txt"
    with stderr_file.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, *command],
            cwd=REPO_ROOT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **EVAL_ENV},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            deadline = time.monotonic() + 240
            while not (results_dir / EPISODES_FILE).is_file() or not (results_dir / EPISODES_FILE).read_text():
                assert proc.poll() is None, stderr_file.read_text()[-3000:]
                assert time.monotonic() < deadline, "no episode finished in time"
                time.sleep(0.1)
            workers = spawned_workers(proc.pid)
            assert len(workers) == 2
            proc.send_signal(signal.SIGTERM)
            gone_by = time.monotonic() + 5  # the main process stops them at once; a grace of 3 s, then SIGKILL
            while live_workers(workers) and time.monotonic() < gone_by:
                time.sleep(0.05)
            assert live_workers(workers) == []
            returncode = proc.wait(timeout=60)  # then the interpreter's own teardown (torch, TensorFlow)
        finally:
            if proc.poll() is None:
                proc.kill()
    message = stderr_file.read_text()
    assert returncode == 143, message[-3000:]
    saved = episode_rows(results_dir)
    assert 1 <= len(saved) < 6 and not any(row.get("error") for row in saved)  # in-flight episodes are not errors
    assert f"error: interrupted by SIGTERM: {len(saved)} of 6 episodes are saved in" in message
    assert "re-run the same command to resume" in message

    rerun = run_python(command, env=EVAL_ENV)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    played = [(row["task_id"], row["trial"]) for row in episode_rows(results_dir)]
    assert sorted(played) == [(0, trial) for trial in range(6)]  # the saved episodes were not played again
    assert json.loads((results_dir / RESULTS_FILE).read_text())["total"]["trials"] == 6


def fixed_chunks(requests: list[dict[str, Any]]) -> list[np.ndarray]:
    """A policy that needs no model: LIBERO-ready chunks that open the gripper."""
    return [np.tile([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0], (8, 1)) for _ in requests]


@pytest.mark.multiprocess
def test_a_hung_episode_times_out_and_its_worker_is_replaced(tmp_path: Path) -> None:
    scripts = {0: [{}, {"hang_at": 12}, {}, {}]}
    workers_before = set(spawned_workers(os.getpid()))
    started = time.monotonic()
    results = evaluate(settings(tmp_path, scripts, workers=2, episode_timeout_s=2.0), fixed_chunks)
    assert time.monotonic() - started < 60
    rows = {(row["task_id"], row["trial"]): row for row in episode_rows(tmp_path / "results")}
    assert rows[(0, 1)]["error"] == "episode timed out after 2 s (its worker was killed)"
    assert [rows[(0, trial)]["error"] for trial in (0, 2, 3)] == [None, None, None]
    assert results["total"]["trials"] == 3 and results["total"]["errors"] == 1
    assert set(spawned_workers(os.getpid())) <= workers_before  # the killed worker and its replacement are gone
    resumed = evaluate(settings(tmp_path, {0: [{}, {}, {}, {}]}, workers=2, episode_timeout_s=2.0), fixed_chunks)
    assert resumed["total"]["trials"] == 4 and resumed["total"]["errors"] == 0  # the timed-out episode played again


@pytest.mark.multiprocess
def test_a_policy_that_never_answers_stops_a_parallel_evaluation(tmp_path: Path) -> None:
    """The policy runs in the main process: a call that hangs would stall every worker, so the timeout ends the run."""
    calls: list[int] = []

    def hanging_policy(requests: list[dict[str, Any]]) -> list[np.ndarray]:
        calls.append(len(requests))
        if len(calls) == 3:
            time.sleep(3600)
        return fixed_chunks(requests)

    workers_before = set(spawned_workers(os.getpid()))
    with pytest.raises(
        RuntimeError, match=r"the policy did not answer a batch of \d+ requests within --episode_timeout_s 1 s;"
    ):
        evaluate(settings(tmp_path, {0: [{}, {}, {}]}, workers=2, episode_timeout_s=1.0), hanging_policy)
    assert set(spawned_workers(os.getpid())) <= workers_before
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL


def test_a_hung_episode_times_out_in_process(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGALRM), signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    scripts = {0: [{"hang_at": 12}, {"succeed_after": 1}]}
    results = evaluate(settings(tmp_path, scripts, workers=0, episode_timeout_s=0.5), fixed_chunks)
    rows = episode_rows(tmp_path / "results")
    assert rows[0]["trial"] == 0 and rows[0]["error"] == "episode timed out after 0.5 s"
    assert rows[1]["trial"] == 1 and rows[1]["error"] is None  # a fresh environment after the stuck one
    assert results["total"]["errors"] == 1
    assert (
        signal.getsignal(signal.SIGALRM),
        signal.getsignal(signal.SIGTERM),
        signal.getsignal(signal.SIGINT),
    ) == before

    outcome: list[BaseException] = []

    def in_a_thread() -> None:
        try:
            evaluate(settings(tmp_path / "thread", scripts, workers=0, episode_timeout_s=0.5), fixed_chunks)
        except ValueError as err:
            outcome.append(err)

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join(timeout=30)
    assert len(outcome) == 1 and "--episode_timeout_s with --num_workers 0" in str(outcome[0])


INTERRUPTED_SCRIPT = """
import json
import sys
from pathlib import Path

import numpy as np
from prismatic.eval.protocol import Protocol
from prismatic.eval.runner import EvalInterrupted, EvalSettings, evaluate

def policy(requests):
    return [np.tile([0.0] * 6 + [-1.0], (8, 1)) for _ in requests]

if __name__ == "__main__":
    settings = EvalSettings(
        protocol=Protocol(suite="libero_spatial", num_trials_per_task=4, max_steps=30),
        results_dir=Path(sys.argv[1]),
        num_workers=0,
        env_factory="helpers.fake_libero:FakeLiberoFactory",
        env_factory_kwargs={"scripts": {"0": [{"step_seconds": 0.05}] * 4}},
    )
    try:
        evaluate(settings, policy)
    except EvalInterrupted as interrupted:
        print(json.dumps({"message": interrupted.message(), "exit_code": interrupted.exit_code}), flush=True)
"""


def test_sigint_stops_an_in_process_evaluation(tmp_path: Path) -> None:
    """Ctrl-C during an in-process evaluation ends the current episode without recording it as an error."""
    script = tmp_path / "interrupted.py"
    script.write_text(INTERRUPTED_SCRIPT)
    results_dir = tmp_path / "results"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(results_dir)],
        cwd=REPO_ROOT,
        env={**os.environ, **EVAL_ENV, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{REPO_ROOT / 'tests'}"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (results_dir / EPISODES_FILE).is_file() or not (results_dir / EPISODES_FILE).read_text():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    report = json.loads(stdout.strip().splitlines()[-1])
    saved = episode_rows(results_dir)
    assert report["exit_code"] == 130 and 1 <= len(saved) < 4 and not any(row["error"] for row in saved)
    assert report["message"].startswith(f"interrupted by SIGINT: {len(saved)} of 4 episodes are saved in")


def test_initial_states_from_a_file(tmp_path: Path) -> None:
    """VLA-Adapter's JSON of initial states replaces the suite's: trials whose expert demonstration failed are
    skipped, and a bad file stops the run before any episode, naming the flag."""
    never = {0: [{}, {}, {}], 1: [{}, {}, {}]}  # the built-in states never succeed
    table = {
        "fake_task_0_of_libero_spatial": {
            "demo_0": {"success": True, "initial_state": [0, 1]},  # [trial, succeed_after] in the stand-in
            "demo_1": {"success": False, "initial_state": [1, 1]},
            "demo_2": {"success": True, "initial_state": [2, 0]},
        },
        "fake_task_1_of_libero_spatial": {f"demo_{k}": {"success": True, "initial_state": [k, 1]} for k in range(3)},
    }
    states_file = tmp_path / "states.json"
    states_file.write_text(json.dumps(table))
    results = evaluate(
        settings(tmp_path, never, workers=0, initial_states_path=states_file),
        ChunkPolicy(RecordingPredictor(), 2, True),
    )
    outcomes = {(row["task_id"], row["trial"]): row["success"] for row in episode_rows(tmp_path / "results")}
    assert outcomes == {(0, 0): True, (0, 2): False, (1, 0): True, (1, 1): True, (1, 2): True}
    assert results["per_task"]["0"]["skipped"] == 1 and results["per_task"]["0"]["trials"] == 2
    assert results["total"]["trials"] == 5 and results["total"]["successes"] == 4
    assert results["setup"]["initial_states_path"] == str(states_file.resolve())

    def refused(name: str, content: str | None, match: str, workers: int = 2) -> None:
        path = tmp_path / name
        if content is not None:
            path.write_text(content)
        run_dir = tmp_path / f"run_{name}"
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            evaluate(settings(run_dir, never, workers=workers, initial_states_path=path), fixed_chunks)
        assert not (run_dir / "results" / EPISODES_FILE).exists()  # stopped before any episode or worker

    refused("absent.json", None, "--initial_states_path .*absent.json: no such file")
    refused("broken.json", '{"fake_task_0', "--initial_states_path .*broken.json is not valid JSON")
    refused("states.pkl", "not read", "--initial_states_path .*states.pkl: expected a .json file")
    one_task = json.dumps({"fake_task_0_of_libero_spatial": table["fake_task_0_of_libero_spatial"]})
    refused("one_task.json", one_task, "no entry 'fake_task_1_of_libero_spatial' for task 1")
    short = {**table, "fake_task_1_of_libero_spatial": {"demo_0": table["fake_task_1_of_libero_spatial"]["demo_0"]}}
    refused("short.json", json.dumps(short), "fake_task_1_of_libero_spatial/demo_1 is missing")
    no_flag = {**table, "fake_task_1_of_libero_spatial": {f"demo_{k}": {"initial_state": [k, 1]} for k in range(3)}}
    refused("no_flag.json", json.dumps(no_flag), "demo_0 needs 'success'", workers=0)
