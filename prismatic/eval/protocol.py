"""The LIBERO evaluation protocol papers report, and the observation / action conversions it prescribes.

Per suite: 10 tasks x 50 trials over LIBERO's fixed initial states in order; `max_steps` per suite plus 10 wait steps
that send a no-op with the gripper open; seed 7 and `env.seed(0)`; 256x256 cameras. The policy sees both cameras
rotated 180 degrees, JPEG round-tripped, resized to 224 with lanczos3 (+ the centre crop for models trained with
augmentation) and the state eef position ++ axis-angle(eef quaternion) ++ gripper qpos. It predicts 8 actions that are
executed open-loop; the gripper value g is binarised to sign(2g - 1) and inverted (LIBERO: -1 open, +1 close).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

SUITE_MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
NUM_STEPS_WAIT = 10  # objects settle while the robot waits with the gripper open
WAIT_ACTION = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0]
SEED = 7
ENV_SEED = 0
CAMERA_RESOLUTION = 256
POLICY_RESOLUTION = 224
JPEG_QUALITY = 95


def suite_of(dataset_name: str) -> str:
    """`libero_spatial_no_noops` -> `libero_spatial` (also accepts the suite name itself)."""
    suite = dataset_name.removesuffix("_no_noops")
    if suite not in SUITE_MAX_STEPS:
        raise ValueError(f"unknown LIBERO suite {dataset_name!r}; choose from {sorted(SUITE_MAX_STEPS)}")
    return suite


def dataset_of(suite: str) -> str:
    return f"{suite_of(suite)}_no_noops"


def statistics_key(suite: str, available: list[str], requested: str | None = None) -> str:
    """The dataset-statistics entry that un-normalises actions: `--unnorm_key` if given, else VLA-Adapter's rule
    (`<suite>`, then `<suite>_no_noops`); anything else is an error, never a silent fallback."""
    if requested is not None:
        if requested not in available:
            raise ValueError(f"--unnorm_key {requested!r} is not in the checkpoint's statistics ({sorted(available)})")
        return requested
    for key in (suite_of(suite), dataset_of(suite)):
        if key in available:
            return key
    raise ValueError(
        f"the checkpoint's statistics have no entry for {suite_of(suite)} or {dataset_of(suite)} (they have "
        f"{sorted(available)}): pass --unnorm_key to choose one"
    )


@dataclass(frozen=True)
class Protocol:
    """Everything that defines an evaluation run, recorded in its results file."""

    suite: str
    num_trials_per_task: int = 50
    task_ids: tuple[int, ...] | None = None  # None = all tasks of the suite
    seed: int = SEED
    env_seed: int = ENV_SEED
    num_steps_wait: int = NUM_STEPS_WAIT
    max_steps: int | None = None  # None = the suite's published value
    center_crop: bool = True
    num_open_loop_steps: int = 8
    camera_resolution: int = CAMERA_RESOLUTION
    policy_resolution: int = POLICY_RESOLUTION

    @property
    def episode_steps(self) -> int:
        return self.max_steps if self.max_steps is not None else SUITE_MAX_STEPS[suite_of(self.suite)]


def quat2axisangle(quat: np.ndarray) -> np.ndarray:
    """(x, y, z, w) quaternion -> axis-angle 3-vector (robosuite's convention)."""
    xyzw = np.asarray(quat, dtype=np.float64).copy()
    xyzw[3] = min(max(xyzw[3], -1.0), 1.0)
    den = math.sqrt(1.0 - xyzw[3] * xyzw[3])
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return xyzw[:3] * 2.0 * math.acos(xyzw[3]) / den


def robot_state(obs: dict[str, Any]) -> np.ndarray:
    """Proprio as in training: eef position (3), axis-angle (3), gripper qpos (2)."""
    return np.concatenate(
        [obs["robot0_eef_pos"], quat2axisangle(obs["robot0_eef_quat"]), obs["robot0_gripper_qpos"]]
    ).astype(np.float32)


def postprocess_actions(actions: np.ndarray) -> np.ndarray:
    """Model gripper (1 open, 0 closed) -> LIBERO's -1 open / +1 close: g -> -sign(2g - 1). Other dims unchanged."""
    out = np.array(actions, dtype=np.float64, copy=True)
    out[..., -1] = -np.sign(2.0 * out[..., -1] - 1.0)
    return out
