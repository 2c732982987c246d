"""Trajectory and frame transforms, faithful to the LIBERO recipe of openvla-oft / VLA-Adapter.

* normalisation: BOUNDS_Q99 (or BOUNDS) on masked dims, then dims with min == max set to 0 (as the reference);
* chunking: window 1 + 7 future actions -> action (8, 7), indices clamped to the episode end; by default the last
  7 frames of an episode are not used as current frames (KEEP, visible as `drop_last_chunk_frames`);
* frames: JPEG decode, resize to 224 with lanczos3 + antialias, round and clip to uint8;
* augmentation, in order: random resized crop (scale 0.9, ratio 1, back to 224), brightness 0.2, contrast
  [0.8, 1.2], saturation [0.8, 1.2], hue 0.05, with stateless seeds (each camera its own);
* eval: the deterministic counterpart of the crop, a centre crop of side sqrt(0.9) resized back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from prismatic.util.import_safety import import_tensorflow
from prismatic.vla.constants import NormalizationType
from prismatic.vla.normalization import normalization_params

tf = import_tensorflow()

CROP_SCALE = 0.9
AUGMENT_ORDER = ("random_resized_crop", "random_brightness", "random_contrast", "random_saturation", "random_hue")


def normalize_tf(values: Any, stats: Mapping[str, Any], kind: NormalizationType) -> Any:
    """tf version of `prismatic.vla.normalization.normalize` (same formula, mask and degenerate-dim rule).

    As in the reference: `lo` is rounded to the data's dtype, the span `hi - lo + 1e-8` is formed in float64 and
    rounded once.
    """
    lo, hi, mask, degenerate = normalization_params(stats, kind)
    lo_t, span_t = tf.constant(lo, values.dtype), tf.constant(hi - lo + 1e-8, values.dtype)
    scaled = tf.clip_by_value(2.0 * (values - lo_t) / span_t - 1.0, -1.0, 1.0)
    out = tf.where(tf.constant(mask), scaled, values)
    return tf.where(tf.constant(degenerate), tf.zeros_like(out), out)


def chunk_actions(action: Any, future: int, drop_last_chunk_frames: bool = True) -> tuple[Any, Any]:
    """(T, A) -> ((T', future + 1, A), frame indices (T',)); T' = T - future when dropping the last frames."""
    length = tf.shape(action)[0]
    frames = tf.maximum(length - future, 0) if drop_last_chunk_frames else length
    idx = tf.range(frames)[:, None] + tf.range(future + 1)[None, :]
    idx = tf.minimum(idx, length - 1)  # clamp to the episode's last action
    return tf.gather(action, idx), tf.range(frames)


def decode_and_resize(encoded: Any, size: int) -> Any:
    """JPEG bytes -> uint8 (size, size, 3), lanczos3 with antialias (like the reference pipeline)."""
    image = tf.io.decode_jpeg(encoded, channels=3)
    resized = tf.image.resize(image, (size, size), method="lanczos3", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def _crop_box(offset: Any, side: float) -> Any:
    return tf.stack([offset[0], offset[1], offset[0] + side, offset[1] + side])[None]


def augment_image(image: Any, seed: Any) -> Any:
    """The training augmentation on one uint8 (H, W, 3) image with a stateless int32 seed pair."""
    size = tf.shape(image)[:2]
    pixels = tf.image.convert_image_dtype(image, tf.float32)
    seeds = tf.random.experimental.stateless_split(seed, num=len(AUGMENT_ORDER))
    side = math.sqrt(CROP_SCALE)  # scale 0.9, ratio 1 -> a square of side sqrt(0.9)
    offset = tf.random.stateless_uniform([2], seed=seeds[0], minval=0.0, maxval=1.0 - side)
    pixels = tf.image.crop_and_resize(pixels[None], _crop_box(offset, side), [0], size)[0]
    pixels = tf.clip_by_value(tf.image.stateless_random_brightness(pixels, 0.2, seeds[1]), 0.0, 1.0)
    pixels = tf.clip_by_value(tf.image.stateless_random_contrast(pixels, 0.8, 1.2, seeds[2]), 0.0, 1.0)
    pixels = tf.clip_by_value(tf.image.stateless_random_saturation(pixels, 0.8, 1.2, seeds[3]), 0.0, 1.0)
    pixels = tf.clip_by_value(tf.image.stateless_random_hue(pixels, 0.05, seeds[4]), 0.0, 1.0)
    return tf.image.convert_image_dtype(pixels, tf.uint8, saturate=True)


def center_crop(image: Any, scale: float = CROP_SCALE) -> Any:
    """Eval-time counterpart of the random crop: centre square of side sqrt(scale), resized back (uint8 in/out).

    Accepts (H, W, 3) or (N, H, W, 3) tensors or numpy arrays; shared by offline evaluation and LIBERO rollouts.
    """
    batched = len(image.shape) == 4
    pixels = tf.image.convert_image_dtype(tf.convert_to_tensor(image), tf.float32)
    if not batched:
        pixels = pixels[None]
    side = tf.sqrt(tf.constant(scale, tf.float32))  # float32 box arithmetic, as the reference (1 LSB otherwise)
    offset = (1.0 - side) / 2.0
    num_images = tf.shape(pixels)[0]
    boxes = tf.tile(tf.stack([offset, offset, offset + side, offset + side])[None], [num_images, 1])
    out = tf.image.crop_and_resize(pixels, boxes, tf.range(num_images), tf.shape(pixels)[1:3])
    out = tf.image.convert_image_dtype(out, tf.uint8, saturate=True)
    return out if batched else out[0]
