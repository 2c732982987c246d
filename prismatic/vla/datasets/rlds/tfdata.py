"""The small tf.data layer the pipeline needs (what `dlimp` provided): read, select, map, flatten, mix, budget.

All maps are parallel and deterministic, so a seeded pipeline yields the same sequence on every run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from prismatic.util.import_safety import import_tensorflow
from prismatic.vla.datasets.rlds.episodes import read_config

tf = import_tensorflow()
import tensorflow_datasets as tfds  # noqa: E402  (after the safe TensorFlow import)

AUTOTUNE = tf.data.AUTOTUNE


def pipeline_options(ram_budget_gb: float = 1.0, parallel: bool = True) -> Any:
    """Deterministic order; tf.data's autotuner keeps its buffers within `ram_budget_gb`.

    `parallel=False` also stops tf.data from parallelising maps by itself (the naive baseline of benchmarks).
    """
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = parallel
    options.autotune.ram_budget = int(ram_budget_gb * 2**30)
    options.experimental_optimization.map_parallelization = parallel
    return options


def read_episodes(builder: Any) -> Any:
    """(episode index, episode) pairs in the dataset's fixed order; images stay JPEG bytes (not decoded)."""
    ds = builder.as_dataset(
        split="train",
        shuffle_files=False,
        read_config=read_config(),
        decoders={"steps": tfds.decode.SkipDecoding()},
    )
    return ds.enumerate()


def keep_episodes(ds: Any, episodes: Sequence[int], num_episodes: int) -> Any:
    """Only the (index, episode) pairs whose index is in `episodes`."""
    mask = np.zeros(num_episodes, dtype=bool)
    mask[np.asarray(episodes, dtype=np.int64)] = True
    keep = tf.constant(mask)
    return ds.filter(lambda index, _: keep[index])


def traj_map(ds: Any, fn: Callable[..., Any], parallel: int | None = None) -> Any:
    """Map over trajectories; `parallel` calls at once (None = autotuned, 1 = sequential)."""
    return ds.map(fn, num_parallel_calls=parallel or AUTOTUNE, deterministic=True)


def flatten(ds: Any, cycle_length: int = 4, parallel: int | None = None) -> Any:
    """Trajectories of stacked frames -> frames, interleaving a few trajectories at a time."""
    return ds.interleave(
        tf.data.Dataset.from_tensor_slices,
        cycle_length=cycle_length,
        num_parallel_calls=parallel or AUTOTUNE,
        deterministic=True,
    )


def frame_map(ds: Any, fn: Callable[..., Any], parallel: int | None = None) -> Any:
    """Map over frames; `parallel` calls at once (None = autotuned, 1 = sequential)."""
    return ds.map(fn, num_parallel_calls=parallel or AUTOTUNE, deterministic=True)


def mix(datasets: Sequence[Any], weights: Sequence[float], seed: int) -> Any:
    """Sample frames from several (infinite) streams with the given weights, reproducibly."""
    if len(datasets) == 1:
        return datasets[0]
    total = float(sum(weights))
    return tf.data.Dataset.sample_from_datasets(
        list(datasets), weights=[w / total for w in weights], seed=seed, stop_on_empty_dataset=False
    )


def bounded_shuffle_buffer(requested: int, bytes_per_frame: float, ram_budget_gb: float | None) -> int:
    """The shuffle buffer (in frames) after capping its encoded size at `ram_budget_gb` (None = no cap)."""
    if requested < 1:
        raise ValueError(f"--shuffle_buffer_size must be >= 1 (got {requested})")
    if ram_budget_gb is None:
        return requested
    return max(1, min(requested, int(ram_budget_gb * 2**30 / max(bytes_per_frame, 1.0))))
