"""Batched action prediction: images + instructions + proprio -> un-normalised (B, chunk, action_dim) actions.

Any batch size: prompts are right-padded (like training) and the whole batch runs at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from prismatic.models.batch import policy_batch
from prismatic.models.image_processing import ImageLike, PrismaticImageProcessor
from prismatic.models.policy import VLAAdapterPolicy
from prismatic.models.prompting import PromptIdCache
from prismatic.vla.normalization import normalize, unnormalize


def select_statistics(dataset_statistics: Mapping[str, Any], unnorm_key: str | None = None) -> Mapping[str, Any]:
    """The per-dataset entry of `dataset_statistics.json` to (un)normalise with."""
    if unnorm_key is None:
        if len(dataset_statistics) != 1:
            raise ValueError(f"dataset_statistics has {sorted(dataset_statistics)}: choose one with unnorm_key")
        unnorm_key = next(iter(dataset_statistics))
    if unnorm_key not in dataset_statistics:
        raise KeyError(f"unnorm_key {unnorm_key!r} not in dataset statistics {sorted(dataset_statistics)}")
    return dataset_statistics[unnorm_key]


class ActionPredictor:
    """Wraps a policy, its tokenizer and statistics for batched inference."""

    def __init__(
        self,
        policy: VLAAdapterPolicy,
        tokenizer: PreTrainedTokenizerBase,
        dataset_statistics: Mapping[str, Any],
        unnorm_key: str | None = None,
        device: str | torch.device = "cpu",
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        self.policy = policy.to(device).eval()
        self.tokenizer = tokenizer
        self.prompt_ids = PromptIdCache(tokenizer)
        self.stats = select_statistics(dataset_statistics, unnorm_key)
        self.device = torch.device(device)
        self.autocast_dtype = autocast_dtype
        self.processor = PrismaticImageProcessor(policy.base_vlm.preset.image_size)
        self.num_images = policy.base_vlm.vision_backbone.num_images

    def _autocast(self) -> Any:
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @torch.inference_mode()
    def predict(
        self,
        images: Sequence[Sequence[ImageLike]],
        instructions: Sequence[str],
        proprio: np.ndarray | Sequence[Sequence[float]] | None = None,
    ) -> np.ndarray:
        """images[b] holds the `num_images_in_input` views of sample b (third-person first, then wrist)."""
        if len(images) != len(instructions):
            raise ValueError(f"{len(images)} image sets but {len(instructions)} instructions")
        if any(len(views) != self.num_images for views in images):
            raise ValueError(f"each sample needs {self.num_images} image(s) (num_images_in_input)")
        robot = self.policy.robot
        proprio_t = None
        if self.policy.use_proprio:
            if proprio is None:
                raise ValueError("this policy uses proprio: pass the robot state for every sample")
            raw = np.asarray(proprio, dtype=np.float32).reshape(len(instructions), robot.proprio_dim)
            proprio_t = torch.from_numpy(normalize(raw, self.stats["proprio"], robot.normalization))
        batch = policy_batch(
            [self.prompt_ids(text) for text in instructions],
            self.tokenizer.pad_token_id,
            torch.stack([self.processor(list(views)) for views in images]),
            proprio=proprio_t,
        )
        with self._autocast():
            out = self.policy(batch.to(self.device))
        actions = out.actions.float().cpu().numpy()
        return unnormalize(actions, self.stats["action"], robot.normalization)
