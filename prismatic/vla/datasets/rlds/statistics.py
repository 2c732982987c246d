"""Dataset statistics in the reference layout of `dataset_statistics.json`.

    {dataset_name: {"action": {mean, std, max, min, q01, q99, mask}, "proprio": {mean, std, max, min, q01, q99},
                    "num_transitions": int, "num_trajectories": int}}

Computed from the episode table (cached), over exactly the episodes a run uses for its statistics: the whole
dataset by default (as the reference), or the few-shot subset only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from prismatic.util.atomic_io import atomic_write_json
from prismatic.vla.datasets.registry import DatasetConfig
from prismatic.vla.datasets.rlds.episodes import EpisodeTable


def _summary(values: np.ndarray) -> dict[str, list[float]]:
    values = values.astype(np.float64)
    return {
        "mean": values.mean(0).tolist(),
        "std": values.std(0).tolist(),
        "max": values.max(0).tolist(),
        "min": values.min(0).tolist(),
        "q01": np.quantile(values, 0.01, axis=0).tolist(),
        "q99": np.quantile(values, 0.99, axis=0).tolist(),
    }


def compute_statistics(table: EpisodeTable, episodes: list[int], config: DatasetConfig) -> dict[str, Any]:
    """Statistics of `episodes` of one dataset (the value stored under its name)."""
    actions, proprio = table.gather(episodes)
    action_stats: dict[str, Any] = _summary(actions)
    if config.action_normalization_mask:
        if len(config.action_normalization_mask) != actions.shape[1]:
            raise ValueError(
                f"{config.name}: action_normalization_mask has {len(config.action_normalization_mask)} dims, "
                f"actions have {actions.shape[1]}"
            )
        action_stats["mask"] = list(config.action_normalization_mask)
    return {
        "action": action_stats,
        "proprio": _summary(proprio),
        "num_transitions": len(actions),
        "num_trajectories": len(episodes),
    }


def save_dataset_statistics(run_dir: str | Path, statistics: dict[str, Any]) -> Path:
    """Write `dataset_statistics.json` (reference layout) into a run or checkpoint directory."""
    return atomic_write_json(Path(run_dir) / "dataset_statistics.json", statistics)
