"""One LIBERO episode: wait steps, then open-loop execution of predicted action chunks until success or timeout."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from prismatic.eval.protocol import WAIT_ACTION, Protocol, robot_state

# obs -> (chunk, action_dim) actions already in LIBERO's convention (see protocol.postprocess_actions)
ChunkQuery = Callable[[dict[str, Any]], np.ndarray]


@dataclass
class EpisodeResult:
    task_id: int
    trial: int
    success: bool
    steps: int  # environment steps after the wait steps
    queries: int  # policy queries (one per executed chunk)
    seconds: float
    description: str = ""
    # set when the episode errored (it raised, its worker died, it timed out): it is then neither a success nor a
    # failure, stays out of the success rate, and the next run plays it again
    error: str | None = None
    video: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EpisodeRecorder:
    """Optional frames for a video (the rotated third-person camera)."""

    enabled: bool = False
    frames: list[np.ndarray] = field(default_factory=list)

    def add(self, obs: dict[str, Any]) -> None:
        if self.enabled:
            self.frames.append(np.ascontiguousarray(obs["agentview_image"][::-1, ::-1]))


def policy_request(obs: dict[str, Any], description: str) -> dict[str, Any]:
    """What a worker sends to the policy: both raw camera frames, the robot state and the instruction."""
    return {
        "images": [obs["agentview_image"], obs["robot0_eye_in_hand_image"]],
        "state": robot_state(obs),
        "instruction": description,
    }


def run_episode(
    env: Any,
    initial_state: Any,
    protocol: Protocol,
    query: ChunkQuery,
    task_id: int,
    trial: int,
    description: str = "",
    recorder: EpisodeRecorder | None = None,
) -> EpisodeResult:
    """Play one trial from `initial_state`; an exception ends the episode and is returned as its `error`."""
    start = time.perf_counter()
    steps = queries = 0
    success = False
    try:
        env.reset()
        obs = env.set_init_state(initial_state)
        pending: deque[np.ndarray] = deque()
        tick = 0
        while tick < protocol.episode_steps + protocol.num_steps_wait:
            if tick < protocol.num_steps_wait:
                obs, _, _, _ = env.step(list(WAIT_ACTION))
                tick += 1
                continue
            if recorder is not None:
                recorder.add(obs)
            if not pending:
                chunk = np.asarray(query(obs))
                queries += 1
                pending.extend(chunk[: protocol.num_open_loop_steps])
            obs, _, done, _ = env.step(pending.popleft().tolist())
            steps += 1
            if done:
                success = True
                break
            tick += 1
    except Exception as err:  # an errored episode is recorded as an error (retried next run), not a failure
        return EpisodeResult(
            task_id,
            trial,
            False,
            steps,
            queries,
            time.perf_counter() - start,
            description,
            error=f"{type(err).__name__}: {err}",
        )
    return EpisodeResult(task_id, trial, success, steps, queries, time.perf_counter() - start, description)
