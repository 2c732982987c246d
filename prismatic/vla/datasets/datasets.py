"""PyTorch side of the data pipeline: `RLDSDataset`, the batch transform and the padded collator.

The heavy work (read, decode, resize, augment, shuffle) happens in parallel tf.data maps; per sample the main
process only looks up the cached prompt ids of the instruction. Image normalisation runs once per batch, vectorised,
in the collator.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset
from transformers import PreTrainedTokenizerBase

from prismatic.models.image_processing import PrismaticImageProcessor
from prismatic.models.prompting import PromptIdCache, pad_prompts
from prismatic.util.import_safety import import_tensorflow
from prismatic.vla.datasets.rlds.stream import StreamConfig, StreamInfo, build_frame_stream

tf = import_tensorflow()


class RLDSBatchTransform:
    """One tf.data frame -> a training sample: prompt + 64 query placeholder ids, images, action chunk, proprio."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.prompt_ids = PromptIdCache(tokenizer)

    def __call__(self, frame: dict[str, Any]) -> dict[str, Any]:
        return {
            "input_ids": self.prompt_ids(frame["instruction"].decode()),
            "images": frame["images"],  # uint8 (n, 224, 224, 3)
            "actions": frame["action"],  # (chunk, action_dim), normalised
            "proprio": frame["proprio"],  # (proprio_dim,), normalised
            "dataset_name": frame["dataset_name"].decode(),
            "episode_index": int(frame["episode_index"]),
            "frame_index": int(frame["frame_index"]),
            "sample_index": int(frame["sample_index"]),
        }


class PaddedCollatorForActionPrediction:
    """Samples -> a batch: `pixel_values` (B, 6n, 224, 224), `input_ids`, `attention_mask`, `labels`, `actions`
    (B, chunk, A), `proprio` (B, P). Prompts are right-padded; `labels` mark the 64 action-query positions."""

    def __init__(self, pad_token_id: int, image_size: int = 224) -> None:
        self.pad_token_id = pad_token_id
        self.processor = PrismaticImageProcessor(image_size)

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = pad_prompts([s["input_ids"] for s in samples], self.pad_token_id)
        images = torch.from_numpy(np.stack([s["images"] for s in samples]))
        batch["pixel_values"] = self.processor.normalize_uint8(images)
        batch["actions"] = torch.from_numpy(np.stack([s["actions"] for s in samples]).astype(np.float32))
        batch["proprio"] = torch.from_numpy(np.stack([s["proprio"] for s in samples]).astype(np.float32))
        batch["dataset_names"] = [s["dataset_name"] for s in samples]
        batch["sample_index"] = torch.tensor([s["sample_index"] for s in samples], dtype=torch.long)
        return batch


class RLDSDataset(IterableDataset):
    """An RLDS dataset or mixture as an iterable of training samples; `len()` is the number of transitions.

    dataset = RLDSDataset("data/libero", "libero_spatial_no_noops", RLDSBatchTransform(tokenizer),
                          image_aug=True, num_images=2, seed=7)
    """

    def __init__(
        self,
        data_root_dir: str | Path,
        data_mix: str,
        batch_transform: RLDSBatchTransform | None = None,
        resize_resolution: tuple[int, int] | int = (224, 224),
        shuffle_buffer_size: int = 100_000,
        train: bool = True,
        image_aug: bool = False,
        **stream_kwargs: Any,
    ) -> None:
        size = resize_resolution if isinstance(resize_resolution, int) else resize_resolution[0]
        if not isinstance(resize_resolution, int) and resize_resolution[0] != resize_resolution[1]:
            raise ValueError(f"resize_resolution must be square (got {resize_resolution})")
        self.config = StreamConfig(
            data_root_dir=Path(data_root_dir),
            dataset_name=data_mix,
            resize_resolution=size,
            shuffle_buffer_size=shuffle_buffer_size,
            train=train,
            image_aug=image_aug,
            **stream_kwargs,
        )
        self.batch_transform = batch_transform
        self.dataset, self.info = build_frame_stream(self.config)

    @property
    def dataset_statistics(self) -> dict[str, Any]:
        return self.info.statistics

    @property
    def stream_info(self) -> StreamInfo:
        return self.info

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
