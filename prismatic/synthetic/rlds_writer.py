"""Write synthetic LIBERO suites as TFDS/RLDS datasets laid out like `openvla/modified_libero_rlds`.

Each suite lands in `<data_root>/<dataset_name>/1.0.0/` (`dataset_info.json`, `features.json`, `metadata.json`,
TFRecord shards) with the feature spec of the real conversion, so `tfds.builder(name, data_dir=root)` and
`tfds.builder_from_directory` read it exactly like the real data. Episodes are rendered in worker processes;
the dataset is prepared in a temporary folder and moved into place only when complete.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from prismatic.synthetic.episodes import EpisodeRequest, generate_episode
from prismatic.synthetic.world import SUITES
from prismatic.util.import_safety import import_tensorflow

DATASET_VERSION = "1.0.0"
GENERATOR_VERSION = 1  # bump when the content a seed produces changes


@dataclass(frozen=True)
class SyntheticSuiteSpec:
    """Everything that determines a synthetic dataset's content (stored in its `metadata.json`)."""

    dataset_name: str
    episodes_per_task: int
    seed: int
    jpeg_quality: int = 95
    generator_version: int = GENERATOR_VERSION
    task_ids: list[int] | None = None  # a subset of the suite's tasks (None: all); e.g. tasks held out of training

    def tasks(self) -> list[int]:
        return list(range(len(SUITES[self.dataset_name]))) if self.task_ids is None else list(self.task_ids)

    def requests(self) -> list[EpisodeRequest]:
        """Every episode; an episode's content depends on its task and index only, not on which other tasks the
        dataset holds."""
        return [
            EpisodeRequest(self.dataset_name, task, episode, self.seed, self.jpeg_quality)
            for task in self.tasks()
            for episode in range(self.episodes_per_task)
        ]

    def to_dict(self) -> dict[str, Any]:
        """The spec as recorded in `metadata.json` (`task_ids` only when set, so that full-suite datasets written
        before it existed still match)."""
        spec = asdict(self)
        if self.task_ids is None:
            del spec["task_ids"]
        return spec


def libero_features() -> Any:
    """The exact feature spec of the LIBERO RLDS conversion (REFERENCE_FACTS section 4)."""
    import_tensorflow()
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict(
        {
            "steps": tfds.features.Dataset(
                {
                    "observation": tfds.features.FeaturesDict(
                        {
                            "image": tfds.features.Image(
                                shape=(256, 256, 3),
                                dtype=np.uint8,
                                encoding_format="jpeg",
                                doc="Main camera RGB observation.",
                            ),
                            "wrist_image": tfds.features.Image(
                                shape=(256, 256, 3),
                                dtype=np.uint8,
                                encoding_format="jpeg",
                                doc="Wrist camera RGB observation.",
                            ),
                            "state": tfds.features.Tensor(
                                shape=(8,),
                                dtype=np.float32,
                                doc="Robot EEF state (3D position, 3D axis-angle, 2D gripper qpos).",
                            ),
                            "joint_state": tfds.features.Tensor(
                                shape=(7,), dtype=np.float32, doc="Robot joint angles."
                            ),
                        }
                    ),
                    "action": tfds.features.Tensor(
                        shape=(7,),
                        dtype=np.float32,
                        doc="Robot EEF action (6D delta pose, gripper -1 open / +1 close).",
                    ),
                    "discount": tfds.features.Scalar(dtype=np.float32, doc="Discount, 1 for demonstrations."),
                    "reward": tfds.features.Scalar(dtype=np.float32, doc="1 on the final step of a demonstration."),
                    "is_first": tfds.features.Scalar(dtype=np.bool_, doc="True on the first step of the episode."),
                    "is_last": tfds.features.Scalar(dtype=np.bool_, doc="True on the last step of the episode."),
                    "is_terminal": tfds.features.Scalar(dtype=np.bool_, doc="True on the last step (success)."),
                    "language_instruction": tfds.features.Text(doc="Language instruction."),
                }
            ),
            "episode_metadata": tfds.features.FeaturesDict(
                {"file_path": tfds.features.Text(doc="Path to the original data file.")}
            ),
        }
    )


def _worker_init() -> None:
    # Rendering is numpy/PIL; one thread per worker process avoids oversubscribing the cores.
    os.environ["OMP_NUM_THREADS"] = "1"


def _episodes(spec: SyntheticSuiteSpec, num_workers: int) -> Iterator[tuple[str, dict[str, Any]]]:
    requests = spec.requests()
    keys = [f"task{r.task_index:02d}_episode{r.episode_index:04d}" for r in requests]
    if num_workers <= 1:
        yield from zip(keys, map(generate_episode, requests), strict=True)
        return
    # "spawn": the parent has TensorFlow's threads running, which `fork` must not copy.
    with mp.get_context("spawn").Pool(num_workers, initializer=_worker_init) as pool:
        yield from zip(keys, pool.imap(generate_episode, requests, chunksize=1), strict=True)


def _builder_class(spec: SyntheticSuiteSpec, num_workers: int) -> type:
    import_tensorflow()
    import tensorflow_datasets as tfds

    class SyntheticLiberoBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version(DATASET_VERSION)
        RELEASE_NOTES: ClassVar[dict[str, str]] = {
            DATASET_VERSION: "Synthetic LIBERO demonstrations (offline stand-in for the real data)."
        }

        def _info(self) -> tfds.core.DatasetInfo:
            return tfds.core.DatasetInfo(
                builder=self,
                description=(
                    f"Synthetic {spec.dataset_name}: scripted pick/place/push/press/pull demonstrations rendered "
                    "from two cameras, in the LIBERO RLDS format."
                ),
                features=libero_features(),
                metadata=tfds.core.MetadataDict(spec.to_dict()),
            )

        def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
            return {"train": self._generate_examples()}

        def _generate_examples(self) -> Iterator[tuple[str, dict[str, Any]]]:
            lengths = []
            for key, episode in _episodes(spec, num_workers):
                lengths.append(len(episode["steps"]))
                yield key, episode
            # Saved with metadata.json when preparation finishes (handy summary; not part of the spec).
            self.info.metadata["num_transitions"] = int(sum(lengths))
            self.info.metadata["episode_length_min_max"] = [int(min(lengths)), int(max(lengths))]

    SyntheticLiberoBuilder.name = spec.dataset_name
    return SyntheticLiberoBuilder


def read_spec(dataset_dir: Path) -> dict[str, Any] | None:
    """The generator spec recorded with an existing synthetic dataset (None if absent or unreadable)."""
    path = dataset_dir / DATASET_VERSION / "metadata.json"
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return {k: recorded[k] for k in SyntheticSuiteSpec.__dataclass_fields__ if k in recorded}


def read_summary(dataset_dir: Path) -> dict[str, Any]:
    """Transitions and episode-length range recorded when the dataset was written."""
    path = dataset_dir / DATASET_VERSION / "metadata.json"
    recorded = json.loads(path.read_text())
    return {k: recorded.get(k) for k in ("num_transitions", "episode_length_min_max")}


def write_synthetic_suite(
    data_root: str | Path, spec: SyntheticSuiteSpec, num_workers: int = 2, overwrite: bool = False
) -> tuple[Path, bool]:
    """Write one suite under `data_root`; returns (dataset folder, whether it was (re)built).

    An existing dataset with the same spec is kept (idempotent). One with a different spec, or a folder that is
    not a complete synthetic dataset, is replaced only with `overwrite` - the real LIBERO data is never
    overwritten silently.
    """
    if spec.dataset_name not in SUITES:
        raise ValueError(f"unknown suite {spec.dataset_name!r}; choose from {sorted(SUITES)}")
    if spec.episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be >= 1, got {spec.episodes_per_task}")
    count = len(SUITES[spec.dataset_name])
    if spec.task_ids is not None and (not spec.task_ids or not all(0 <= task < count for task in spec.task_ids)):
        raise ValueError(f"task_ids {spec.task_ids}: {spec.dataset_name} has tasks 0..{count - 1}")
    data_root = Path(data_root)
    final = data_root / spec.dataset_name
    if final.exists():
        if read_spec(final) == spec.to_dict() and (final / DATASET_VERSION / "dataset_info.json").is_file():
            return final, False
        if not overwrite:
            raise FileExistsError(
                f"{final} exists and was not written with this spec ({spec.to_dict()}); pass --overwrite True to "
                "replace it (or choose another --data_root_dir)"
            )
    data_root.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(prefix=f".{spec.dataset_name}.", suffix=".tmp", dir=data_root))
    try:
        import tensorflow_datasets as tfds

        builder = _builder_class(spec, num_workers)(data_dir=str(tmp_root))
        builder.download_and_prepare(
            download_dir=str(tmp_root / "downloads"),
            download_config=tfds.download.DownloadConfig(try_download_gcs=False),
        )
        if final.exists():
            old = data_root / f".{spec.dataset_name}.old-{os.getpid()}-{time.time_ns()}"
            os.replace(final, old)
            os.replace(tmp_root / spec.dataset_name, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_root / spec.dataset_name, final)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return final, True
