"""What the policy consumes, and how it is built: `PolicyBatch`, from prompts (`pad_prompts`) or from RLDS frames
(`RLDSBatchTransform` per sample, `PaddedCollatorForActionPrediction` per batch).

The 64 action-query positions are marked once, here, as a boolean `query_mask`; everything downstream (the policy,
CRaFT's anchor, offline evaluation) takes the batch whole. Per sample the data loader only looks up the cached
prompt ids of the instruction; image normalisation runs once per batch, vectorised, in the collator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from prismatic.models.image_processing import PrismaticImageProcessor
from prismatic.models.prompting import PromptIdCache
from prismatic.vla.constants import ACTION_QUERY_TOKEN_ID, LIBERO_CONSTANTS, NUM_ACTION_QUERIES


@dataclass
class PolicyBatch:
    """One batch of policy inputs (and, in training and offline evaluation, targets)."""

    pixel_values: torch.Tensor  # (B, 6 x images, 224, 224)
    input_ids: torch.Tensor  # (B, L) prompt + 64 action-query placeholders, right-padded
    attention_mask: torch.Tensor  # (B, L)
    query_mask: torch.Tensor  # (B, L) bool: the 64 action-query positions of each row
    proprio: torch.Tensor | None = None  # (B, P) normalised
    actions: torch.Tensor | None = None  # (B, chunk, A) normalised targets
    sample_index: torch.Tensor | None = None  # (B,) position of each sample in its stream
    dataset_names: list[str] = field(default_factory=list)
    # (B, 2) episode and frame index of each sample: which frame it is (the anchor-feature cache's key); kept on the
    # host by `to`, so that reading it never waits for the GPU
    frame_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PolicyBatch:
        moved = {
            f.name: value.to(device, non_blocking=non_blocking)
            for f in fields(self)
            if isinstance(value := getattr(self, f.name), torch.Tensor) and f.name != "frame_ids"
        }
        return replace(self, **moved)

    def select(self, rows: torch.Tensor | list[int]) -> PolicyBatch:
        """The samples at `rows` (positions in this batch), in that order."""
        positions = rows.tolist() if isinstance(rows, torch.Tensor) else list(rows)
        picked: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                picked[f.name] = value[torch.as_tensor(positions, device=value.device)]
            elif isinstance(value, list) and value:
                picked[f.name] = [value[position] for position in positions]
        return replace(self, **picked)

    def frame_keys(self) -> list[tuple[str, int, int]]:
        """(dataset, episode, frame) of every sample: what makes two samples the same frame."""
        if self.frame_ids is None:
            raise ValueError("this batch does not say which frames it holds (no frame_ids)")
        names = self.dataset_names or [""] * len(self)
        ids = self.frame_ids.tolist()
        return [(name, int(episode), int(frame)) for name, (episode, frame) in zip(names, ids, strict=True)]

    def pin_memory(self) -> PolicyBatch:
        """The batch in page-locked host memory (what `DataLoader(pin_memory=True)` calls), so that
        `.to(cuda, non_blocking=True)` really overlaps the copy with compute."""
        pinned = {
            f.name: value.pin_memory() for f in fields(self) if isinstance(value := getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **pinned)

    def head(self, count: int) -> PolicyBatch:
        """The first `count` samples."""
        kept = {
            f.name: value[:count]
            for f in fields(self)
            if isinstance(value := getattr(self, f.name), torch.Tensor | list)
        }
        return replace(self, **kept)

    def vlm_inputs(self) -> dict[str, torch.Tensor]:
        """The keyword arguments of `PrismaticVLM.forward`."""
        return {
            "pixel_values": self.pixel_values,
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "query_mask": self.query_mask,
        }


def pad_prompts(sequences: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, ...]:
    """Right-pad prompt + query id lists: (input_ids, attention_mask, query_mask).

    The action queries are the last 64 real tokens of each row; right padding keeps the prompt's first token first.
    """
    longest = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    query_mask = torch.zeros((len(sequences), longest), dtype=torch.bool)
    for row, seq in enumerate(sequences):
        length = len(seq)
        input_ids[row, :length] = torch.as_tensor(seq, dtype=torch.long)
        attention_mask[row, :length] = 1
        query_mask[row, length - NUM_ACTION_QUERIES : length] = True
    return input_ids, attention_mask, query_mask


def policy_batch(
    prompts: Sequence[Sequence[int]], pad_token_id: int, pixel_values: torch.Tensor, **rest: Any
) -> PolicyBatch:
    """A `PolicyBatch` from prompt + query id lists (padded here) and pixel values; `rest`: the optional fields."""
    input_ids, attention_mask, query_mask = pad_prompts(prompts, pad_token_id)
    return PolicyBatch(pixel_values, input_ids, attention_mask, query_mask, **rest)


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
    """Samples of `RLDSBatchTransform` -> a `PolicyBatch` (right-padded prompts, normalised pixels)."""

    def __init__(self, pad_token_id: int, image_size: int = 224) -> None:
        self.pad_token_id = pad_token_id
        self.processor = PrismaticImageProcessor(image_size)

    def __call__(self, samples: Sequence[dict[str, Any]]) -> PolicyBatch:
        images = torch.from_numpy(np.stack([s["images"] for s in samples]))
        return policy_batch(
            [s["input_ids"] for s in samples],
            self.pad_token_id,
            self.processor.normalize_uint8(images),
            proprio=torch.from_numpy(np.stack([s["proprio"] for s in samples]).astype(np.float32)),
            actions=torch.from_numpy(np.stack([s["actions"] for s in samples]).astype(np.float32)),
            sample_index=torch.tensor([s["sample_index"] for s in samples], dtype=torch.long),
            dataset_names=[s["dataset_name"] for s in samples],
            frame_ids=torch.tensor([[s["episode_index"], s["frame_index"]] for s in samples], dtype=torch.long),
        )


def random_batch(
    batch_size: int, num_images: int = 2, generator: torch.Generator | None = None, prompt_length: int = 56
) -> PolicyBatch:
    """A batch of random inputs and targets with the real shapes (benchmarks and tests): random prompt ids followed
    by the 64 action-query placeholders, LIBERO-sized proprio and action chunks."""
    robot = LIBERO_CONSTANTS
    prompts = torch.randint(0, 150_000, (batch_size, prompt_length), generator=generator).tolist()
    return policy_batch(
        [prompt + [ACTION_QUERY_TOKEN_ID] * NUM_ACTION_QUERIES for prompt in prompts],
        0,
        torch.randn(batch_size, 6 * num_images, 224, 224, generator=generator),
        proprio=torch.randn(batch_size, robot.proprio_dim, generator=generator),
        actions=torch.rand(batch_size, robot.action_chunk, robot.action_dim, generator=generator) * 2 - 1,
        frame_ids=torch.stack([torch.zeros(batch_size, dtype=torch.long), torch.arange(batch_size)], dim=1),
    )
