"""`RLDSDataset`: the frame stream of an RLDS dataset or mixture as a PyTorch iterable dataset.

The heavy work (read, decode, resize, augment, shuffle) happens in parallel tf.data maps; what a sample becomes for
a model is the `batch_transform`'s business (`prismatic.models.batch.RLDSBatchTransform` for the policy).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from torch.utils.data import IterableDataset

from prismatic.util.import_safety import import_tensorflow
from prismatic.vla.datasets.rlds.stream import StreamConfig, build_frame_stream

tf = import_tensorflow()


class RLDSDataset(IterableDataset):
    """An RLDS dataset or mixture as an iterable of training samples; `len()` is the number of transitions.

    dataset = RLDSDataset("data/libero", "libero_spatial_no_noops", RLDSBatchTransform(tokenizer),
                          image_aug=True, num_images=2, seed=7)
    dataset = RLDSDataset.from_config(StreamConfig(...), RLDSBatchTransform(tokenizer))
    """

    def __init__(
        self,
        data_root_dir: str | Path,
        dataset_name: str,
        batch_transform: Callable[[dict[str, Any]], Any] | None = None,
        resize_resolution: tuple[int, int] | int = (224, 224),
        shuffle_buffer_size: int = 100_000,
        train: bool = True,
        image_aug: bool = False,
        **stream_kwargs: Any,
    ) -> None:
        size = resize_resolution if isinstance(resize_resolution, int) else resize_resolution[0]
        if not isinstance(resize_resolution, int) and resize_resolution[0] != resize_resolution[1]:
            raise ValueError(f"resize_resolution must be square (got {resize_resolution})")
        config = StreamConfig(
            data_root_dir=Path(data_root_dir),
            dataset_name=dataset_name,
            resize_resolution=size,
            shuffle_buffer_size=shuffle_buffer_size,
            train=train,
            image_aug=image_aug,
            **stream_kwargs,
        )
        self._open(config, batch_transform)

    @classmethod
    def from_config(
        cls, config: StreamConfig, batch_transform: Callable[[dict[str, Any]], Any] | None = None
    ) -> RLDSDataset:
        """A dataset over a ready stream configuration (what the trainer and offline evaluation build)."""
        dataset = cls.__new__(cls)
        dataset._open(config, batch_transform)
        return dataset

    def _open(self, config: StreamConfig, batch_transform: Callable[[dict[str, Any]], Any] | None) -> None:
        self.config = config
        self.batch_transform = batch_transform
        self.dataset, self.info = build_frame_stream(config)

    @property
    def dataset_statistics(self) -> dict[str, Any]:
        return self.info.statistics

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            for frame in self.dataset.as_numpy_iterator():
                yield frame if self.batch_transform is None else self.batch_transform(frame)
        except tf.errors.DataLossError as err:  # a record whose data is damaged (headers were checked up front)
            raise ValueError(
                f"reading {self.config.dataset_name} under {self.config.data_root_dir} failed: "
                f"{' '.join(str(err.message).split())}; re-download or regenerate the dataset"
            ) from err

    def __len__(self) -> int:
        return self.info.num_transitions
