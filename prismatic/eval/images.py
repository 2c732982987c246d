"""Camera frame -> policy image, with the exact ops of the training pipeline (TensorFlow JPEG, lanczos3 resize).

LIBERO renders upside down; the RLDS data was stored rotated by 180 degrees and JPEG-encoded, so at test time the
frame is rotated, JPEG round-tripped, resized to 224 like the training frames, and centre-cropped when the model was
trained with the random crop.

Importing this module imports TensorFlow; `policy_adapter` therefore imports it at the first policy call only (see
`ChunkPolicy`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from prismatic.eval.protocol import JPEG_QUALITY, POLICY_RESOLUTION
from prismatic.util.import_safety import import_tensorflow
from prismatic.vla.datasets.rlds.transforms import center_crop, decode_and_resize

tf = import_tensorflow()


def prepare_image(frame: np.ndarray, center: bool, size: int = POLICY_RESOLUTION, rotate: bool = True) -> np.ndarray:
    """One raw (H, W, 3) uint8 camera frame -> the (size, size, 3) uint8 image the policy sees."""
    image = np.ascontiguousarray(frame[::-1, ::-1] if rotate else frame)
    encoded = tf.io.encode_jpeg(tf.constant(image), quality=JPEG_QUALITY)
    out = decode_and_resize(encoded, size)
    if center:
        out = center_crop(out)
    return out.numpy()


def prepare_views(frames: Sequence[np.ndarray], center: bool, size: int = POLICY_RESOLUTION) -> list[np.ndarray]:
    return [prepare_image(frame, center, size) for frame in frames]
