"""Per-dataset standardisation: raw RLDS steps -> `action` (T, A) and `observation/proprio` (T, P).

Functions take and return the dict of step tensors of one trajectory (images untouched, still JPEG bytes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prismatic.util.import_safety import import_tensorflow

tf = import_tensorflow()

Steps = dict[str, Any]


def libero(steps: Steps) -> Steps:
    """LIBERO: gripper -1 open / +1 close -> 1 - clip(a, 0, 1) (1 open, 0 closed); proprio = state[:6] ++ state[-2:]."""
    action = steps["action"]
    gripper = 1.0 - tf.clip_by_value(action[:, -1:], 0.0, 1.0)
    state = steps["observation"]["state"]
    return {
        **steps,
        "action": tf.concat([action[:, :6], gripper], axis=1),
        "observation": {**steps["observation"], "proprio": tf.concat([state[:, :6], state[:, -2:]], axis=1)},
    }


STANDARDIZE: dict[str, Callable[[Steps], Steps]] = {"libero": libero}
# Bump when a standardisation changes what it produces (it is part of the statistics cache key).
STANDARDIZE_VERSION = 1
