"""Episode table of an RLDS dataset: one metadata pass, cached by a content key, and what is derived from it.

The table lists every episode in the dataset's fixed read order (instruction, file path, length) with its
standardised actions and proprio. From it come, without touching the images again: the train / held-out split,
few-shot subsets, per-rank shards, and the statistics of any subset.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prismatic.util.atomic_io import atomic_write_bytes
from prismatic.util.import_safety import import_tensorflow
from prismatic.vla.datasets.registry import DatasetConfig
from prismatic.vla.datasets.rlds.standardize import STANDARDIZE, STANDARDIZE_VERSION

tf = import_tensorflow()
import tensorflow_datasets as tfds  # noqa: E402  (after the safe TensorFlow import)

TABLE_FORMAT_VERSION = 1
CACHE_ENV = "VLA_CRAFT_CACHE_DIR"


def cache_root() -> Path:
    """Where episode tables are cached: $VLA_CRAFT_CACHE_DIR, else ~/.cache/vla-adapter-craft."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "vla-adapter-craft"))


def open_builder(data_root_dir: str | Path, name: str) -> Any:
    """The TFDS builder of `<data_root_dir>/<name>/<version>/`, with an error that says where it looked."""
    folder = Path(data_root_dir) / name
    if not folder.is_dir():
        raise FileNotFoundError(
            f"dataset {name!r} not found: {folder} does not exist. Check --data_root_dir (it must contain the "
            f"{name} folder) or generate synthetic data with `python vla-scripts/make_synthetic_libero.py "
            f"--data_root_dir {data_root_dir}`"
        )
    try:
        return tfds.builder(name, data_dir=str(data_root_dir))
    except Exception as err:
        raise FileNotFoundError(f"{folder} is not a readable TFDS dataset ({err})") from err


def read_config() -> Any:
    """Sequential, deterministic file order: episode indices mean the same thing in every pass."""
    return tfds.ReadConfig(interleave_cycle_length=1, shuffle_seed=None, add_tfds_id=False)


def content_key(builder: Any, config: DatasetConfig) -> str:
    """Fingerprint of the dataset's content and of how it is standardised (not of where it lives)."""
    info = builder.info
    train = info.splits["train"]
    parts: dict[str, Any] = {
        "name": config.name,
        "version": str(info.version),
        "features": info.features.to_json_content()
        if hasattr(info.features, "to_json_content")
        else str(info.features),
        "num_examples": train.num_examples,
        "num_bytes": train.num_bytes,
        "shard_lengths": list(train.shard_lengths),
        "standardize": [config.standardize, STANDARDIZE_VERSION],
        "table_format": TABLE_FORMAT_VERSION,
    }
    metadata = Path(builder.data_dir) / "metadata.json"
    if metadata.is_file():  # e.g. the synthetic generator's seed and flags
        parts["metadata"] = metadata.read_text()
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class EpisodeTable:
    dataset_name: str
    key: str
    instructions: list[str]
    file_paths: list[str]
    lengths: np.ndarray  # (N,) steps per episode
    actions: np.ndarray  # (sum(lengths), A), standardised, all episodes back to back
    proprio: np.ndarray  # (sum(lengths), P)

    @property
    def num_episodes(self) -> int:
        return len(self.lengths)

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)])

    def episode_slice(self, index: int) -> slice:
        offsets = self.offsets
        return slice(int(offsets[index]), int(offsets[index + 1]))

    def gather(self, episodes: list[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Actions and proprio of the given episodes, concatenated."""
        if len(episodes) == 0:
            raise ValueError("no episodes selected")
        slices = [self.episode_slice(int(i)) for i in episodes]
        return np.concatenate([self.actions[s] for s in slices]), np.concatenate([self.proprio[s] for s in slices])

    def save(self, path: Path) -> None:
        import io

        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            key=np.array(self.key),
            dataset_name=np.array(self.dataset_name),
            instructions=np.array(self.instructions, dtype=object).astype(str),
            file_paths=np.array(self.file_paths, dtype=object).astype(str),
            lengths=self.lengths,
            actions=self.actions,
            proprio=self.proprio,
        )
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: Path) -> EpisodeTable:
        with np.load(path, allow_pickle=False) as arrays:
            return cls(
                dataset_name=str(arrays["dataset_name"]),
                key=str(arrays["key"]),
                instructions=[str(s) for s in arrays["instructions"]],
                file_paths=[str(s) for s in arrays["file_paths"]],
                lengths=arrays["lengths"].astype(np.int64),
                actions=arrays["actions"].astype(np.float32),
                proprio=arrays["proprio"].astype(np.float32),
            )


def _scan(builder: Any, config: DatasetConfig) -> tuple[list[str], list[str], list[int], list[Any], list[Any]]:
    standardize = STANDARDIZE[config.standardize]

    def strip(episode: dict[str, Any]) -> dict[str, Any]:
        steps = standardize(episode["steps"])
        return {
            "instruction": steps[config.language_key][0],
            "file_path": episode["episode_metadata"]["file_path"],
            "action": steps["action"],
            "proprio": steps["observation"]["proprio"],
        }

    ds = builder.as_dataset(
        split="train", shuffle_files=False, read_config=read_config(), decoders={"steps": tfds.decode.SkipDecoding()}
    )
    ds = ds.map(strip, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    instructions, paths, lengths, actions, proprio = [], [], [], [], []
    for ep in ds.as_numpy_iterator():
        instructions.append(ep["instruction"].decode())
        paths.append(ep["file_path"].decode())
        lengths.append(len(ep["action"]))
        actions.append(ep["action"].astype(np.float32))
        proprio.append(ep["proprio"].astype(np.float32))
    return instructions, paths, lengths, actions, proprio


def load_episode_table(builder: Any, config: DatasetConfig, use_cache: bool = True) -> EpisodeTable:
    """The table of `builder`'s dataset, from the cache when its content key matches, else by one pass."""
    key = content_key(builder, config)
    path = cache_root() / "episode_tables" / f"{config.name}-{key[:16]}.npz"
    if use_cache and path.is_file():
        try:
            table = EpisodeTable.load(path)
            if table.key == key:
                return table
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache entry: rebuild it
    instructions, paths, lengths, actions, proprio = _scan(builder, config)
    if not lengths:
        raise ValueError(f"dataset {config.name} has no episodes in its train split")
    table = EpisodeTable(
        dataset_name=config.name,
        key=key,
        instructions=instructions,
        file_paths=paths,
        lengths=np.asarray(lengths, dtype=np.int64),
        actions=np.concatenate(actions),
        proprio=np.concatenate(proprio),
    )
    if use_cache:
        table.save(path)
    return table


# ---------------------------------------------------------------------------------------------------------------
# selections
# ---------------------------------------------------------------------------------------------------------------
def train_heldout_split(num_episodes: int, heldout_fraction: float) -> tuple[list[int], list[int]]:
    """First round((1 - f) N) episodes train, the rest held out; f in [0, 1) is checked by `StreamConfig.validate`.

    f = 0 (the default) trains on every episode, as VLA-Adapter and openvla-oft do (`split="train"`); the original
    OpenVLA trained on `train[:95%]` (f = 0.05).
    """
    n_train = max(1, round(num_episodes * (1.0 - heldout_fraction)))
    return list(range(n_train)), list(range(n_train, num_episodes))


def select_few_shot(table: EpisodeTable, candidates: list[int], shots: int, seed: int) -> list[int]:
    """K episodes per task (task = language instruction), chosen deterministically from `seed` (shots >= 1 is checked by
    `StreamConfig.validate`)."""
    by_task: dict[str, list[int]] = {}
    for episode in candidates:
        by_task.setdefault(table.instructions[episode], []).append(episode)
    chosen: list[int] = []
    for task in sorted(by_task):
        episodes = by_task[task]
        if len(episodes) < shots:
            raise ValueError(
                f"--n_shot_episodes {shots}: task {task!r} of {table.dataset_name} has only {len(episodes)} training "
                f"episode(s); lower --n_shot_episodes or --heldout_episode_fraction"
            )
        digest = int(hashlib.sha256(task.encode()).hexdigest()[:8], 16)
        rng = np.random.default_rng([seed, digest])
        chosen.extend(int(i) for i in rng.choice(episodes, size=shots, replace=False))
    return sorted(chosen)


def shard_for_rank(episodes: list[int], rank: int, world_size: int) -> list[int]:
    """Disjoint, balanced per-rank episode lists (round robin over the sorted selection)."""
    shard = sorted(episodes)[rank::world_size]
    if not shard:
        raise ValueError(
            f"rank {rank} of {world_size} gets no episodes ({len(episodes)} selected): use fewer processes"
        )
    return shard


def episode_manifest(table: EpisodeTable, episodes: list[int]) -> list[dict[str, Any]]:
    """The chosen episodes, as saved in the run directory."""
    return [
        {
            "dataset_name": table.dataset_name,
            "episode_index": int(i),
            "language_instruction": table.instructions[i],
            "file_path": table.file_paths[i],
            "num_steps": int(table.lengths[i]),
        }
        for i in episodes
    ]
