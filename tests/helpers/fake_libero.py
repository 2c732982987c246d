"""A stand-in for LIBERO environments with the same interface, for testing the evaluation loop without assets.

Like LIBERO it renders upside down (a red marker that belongs in the top-left corner of the upright third-person
image arrives bottom-right; a blue one for the wrist camera), reports `robot0_eef_pos`, `robot0_eef_quat` (x, y, z, w)
and `robot0_gripper_qpos`, and answers `step` with (obs, reward, done, info). Each initial state scripts the episode:
`succeed_after` (steps after which a closing gripper command succeeds), `raise_at`, `exit_at` (kills the process),
`hang_at` (the step never returns), `step_seconds` (a slow simulator). A numeric state, as read from an
`--initial_states_path` file, is `[trial, succeed_after (0 = never)]`. Every step is appended to
`<trace_dir>/task{t}_trial{k}.jsonl`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from prismatic.eval.libero_env import EnvHandle

EEF_POS = np.array([0.1, -0.2, 1.0])
EEF_QUAT = np.array([0.0, 0.0, np.sin(0.25), np.cos(0.25)])  # 0.5 rad about z
GRIPPER_QPOS = np.array([0.03, -0.03])


class FakeLiberoEnv:
    def __init__(self, task_id: int, resolution: int, trace_dir: Path | None) -> None:
        self.task_id, self.resolution, self.trace_dir = task_id, resolution, trace_dir
        self.state: dict[str, Any] = {}
        self.t = 0
        self.closed = False

    def reset(self) -> None:
        self.t = 0

    def set_init_state(self, state: dict[str, Any] | np.ndarray) -> dict[str, Any]:
        if not isinstance(state, dict):  # from an initial-states file
            trial, succeed_after = (int(value) for value in np.asarray(state))
            state = {"trial": trial, "succeed_after": succeed_after or None, "from_file": True}
        self.state, self.t = dict(state), 0
        return self._obs()

    def step(self, action: list[float]) -> tuple[dict[str, Any], float, bool, dict[str, Any]]:
        self.t += 1
        if self.trace_dir is not None:
            path = self.trace_dir / f"task{self.task_id}_trial{self.state['trial']}.jsonl"
            with path.open("a") as trace_file:
                trace_file.write(json.dumps({"t": self.t, "action": [float(a) for a in action]}) + "\n")
        if self.state.get("raise_at") == self.t:
            raise RuntimeError("simulated physics failure")
        if self.state.get("exit_at") == self.t:
            os._exit(3)
        if self.state.get("hang_at") == self.t:
            time.sleep(3600)  # a simulator step that never returns
        time.sleep(self.state.get("step_seconds", 0.0))
        after = self.state.get("succeed_after")
        done = after is not None and self.t >= after and action[-1] > 0
        return self._obs(), float(done), done, {}

    def close(self) -> None:
        self.closed = True

    def _frame(self, color: tuple[int, int, int]) -> np.ndarray:
        upright = np.full((self.resolution, self.resolution, 3), 90, dtype=np.uint8)
        upright[:40, :40] = color  # top-left in the upright image
        return upright[::-1, ::-1].copy()  # LIBERO delivers it rotated by 180 degrees

    def _obs(self) -> dict[str, Any]:
        return {
            "agentview_image": self._frame((255, 0, 0)),
            "robot0_eye_in_hand_image": self._frame((0, 0, 255)),
            "robot0_eef_pos": EEF_POS + 0.001 * self.t,
            "robot0_eef_quat": EEF_QUAT.copy(),
            "robot0_gripper_qpos": GRIPPER_QPOS.copy(),
        }


class FakeLiberoFactory:
    """`scripts[task_id]` = list of per-trial initial states (dicts); trial i uses scripts[task][i]."""

    def __init__(self, scripts: dict[str, list[dict[str, Any]]], trace_dir: str | None = None) -> None:
        self.scripts = {int(k): v for k, v in scripts.items()}
        self.trace_dir = Path(trace_dir) if trace_dir else None

    def num_tasks(self, suite: str) -> int:
        return len(self.scripts)

    def task_description(self, suite: str, task_id: int) -> str:
        return f"fake task {task_id} of {suite}"

    def make(self, suite: str, task_id: int, resolution: int, env_seed: int) -> EnvHandle:
        states = [{**s, "trial": i} for i, s in enumerate(self.scripts[task_id])]
        env = FakeLiberoEnv(task_id, resolution, self.trace_dir)
        return EnvHandle(env, self.task_description(suite, task_id), states)


class CommandLineFakeLiberoFactory(FakeLiberoFactory):
    """For `eval_libero.py --env_factory` (which passes no arguments): two tasks, the first succeeds after 5 steps."""

    def __init__(self) -> None:
        super().__init__({"0": [{"succeed_after": 5}], "1": [{}]})


class ErroringFakeLiberoFactory(FakeLiberoFactory):
    """For `eval_libero.py --env_factory`: one task whose only episode hits a simulator error."""

    def __init__(self) -> None:
        super().__init__({"0": [{"raise_at": 3}]})


class ProbingFakeLiberoFactory(CommandLineFakeLiberoFactory):
    """For `eval_libero.py --env_factory`: like CommandLineFakeLiberoFactory, and every `make` appends to the file
    `$FAKE_LIBERO_PROBE` what a real simulator's renderer depends on at that moment: MUJOCO_GL, and whether
    TensorFlow is already loaded in the process (robosuite's OpenGL renderer crashes when it is)."""

    def make(self, suite: str, task_id: int, resolution: int, env_seed: int) -> EnvHandle:
        probe = {
            "task_id": task_id,
            "MUJOCO_GL": os.environ.get("MUJOCO_GL"),
            "tensorflow": "tensorflow" in sys.modules,
        }
        with Path(os.environ["FAKE_LIBERO_PROBE"]).open("a") as probe_file:
            probe_file.write(json.dumps(probe) + "\n")
        return super().make(suite, task_id, resolution, env_seed)


class SlowFakeLiberoFactory(FakeLiberoFactory):
    """For `eval_libero.py --env_factory`: one task of six trials whose steps take 50 ms (an episode of 16 steps,
    plus the wait steps, lasts 1.3 s), to interrupt an evaluation while episodes are in flight."""

    def __init__(self) -> None:
        super().__init__({"0": [{"step_seconds": 0.05}] * 6})
