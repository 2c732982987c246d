"""The batched policy the evaluation runner calls: raw LIBERO requests -> LIBERO-ready action chunks."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from prismatic.eval.protocol import postprocess_actions


class Predictor(Protocol):
    def predict(self, images: Any, instructions: Any, proprio: Any) -> np.ndarray: ...


class ChunkPolicy:
    """Prepares images exactly like training, queries the policy once for the whole batch, converts the gripper.

    The image module imports TensorFlow, so it is imported at the first call, not with this module: an in-process
    evaluation (`--num_workers 0`) must create its first simulator renderer before TensorFlow is loaded (robosuite's
    OpenGL renderer segfaults in a process that already holds TensorFlow), and the first call comes after it."""

    def __init__(self, predictor: Predictor, num_images: int, center_crop: bool) -> None:
        self.predictor, self.num_images, self.center_crop = predictor, num_images, center_crop

    def __call__(self, requests: list[dict[str, Any]]) -> list[np.ndarray]:
        from prismatic.eval.images import prepare_views

        images = [prepare_views(req["images"][: self.num_images], self.center_crop) for req in requests]
        states = np.stack([np.asarray(req["state"], dtype=np.float32) for req in requests])
        actions = self.predictor.predict(images, [req["instruction"] for req in requests], states)
        return list(postprocess_actions(actions))
