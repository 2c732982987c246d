"""Validation during training (VLA-Adapter's `--use_val_set`): action L1 on the held-out episodes every `--val_freq`
steps, on the main process only, within `--val_time_limit` seconds.

Validation runs no collective operation, so the other processes simply wait at their next gradient all-reduce. The
held-out frames are read from the start each time, in order and centre-cropped like evaluation, so successive values
are measured on the same frames (as many as the time limit allows).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch
from torch.utils.data import DataLoader

from craft import CRaFTConfig, retention_loss
from prismatic.models.anchor import Anchor, retention_features
from prismatic.models.batch import PaddedCollatorForActionPrediction, RLDSBatchTransform
from prismatic.models.policy import VLAAdapterPolicy
from prismatic.training.distributed import training_autocast
from prismatic.training.metrics import VALIDATION_PREFIX
from prismatic.vla.datasets import RLDSDataset
from prismatic.vla.datasets.rlds.stream import StreamConfig

VAL_L1 = f"{VALIDATION_PREFIX}L1 Loss"
VAL_CURRENT_L1 = f"{VALIDATION_PREFIX}Curr Action L1 Loss"
VAL_NEXT_L1 = f"{VALIDATION_PREFIX}Next Actions L1 Loss"
VAL_RETENTION = f"{VALIDATION_PREFIX}Retention Loss"
VAL_SAMPLES = f"{VALIDATION_PREFIX}Samples"
VAL_SECONDS = f"{VALIDATION_PREFIX}Seconds"


class Validator:
    """The held-out stream of a training run and the loop that measures the policy on it."""

    def __init__(
        self,
        train_stream: StreamConfig,
        statistics: dict[str, Any],
        tokenizer: Any,
        batch_size: int,
        time_limit_s: float,
        device: torch.device,
    ) -> None:
        held_out = replace(
            train_stream,
            statistics=statistics,  # normalised like the training frames
            n_shot_episodes=None,  # every held-out episode, also for a few-shot run
            train=False,
            image_aug=False,
            center_crop=train_stream.image_aug,  # a model trained with random crops is evaluated on the centre
            use_heldout_episodes=True,
            rank=0,
            world_size=1,
            start_sample=0,
        )
        self.dataset = RLDSDataset.from_config(held_out, RLDSBatchTransform(tokenizer))
        collate = PaddedCollatorForActionPrediction(tokenizer.pad_token_id)
        self.loader = DataLoader(self.dataset, batch_size=batch_size, num_workers=0, collate_fn=collate)
        self.time_limit_s = time_limit_s
        self.device = device

    def run(self, policy: VLAAdapterPolicy, anchor: Anchor | None, craft_cfg: CRaFTConfig) -> dict[str, float]:
        """Mean L1 (all, current, next actions) and, with an anchor, the retention loss, over the frames read in time.

        `policy` is the unwrapped module (never the DDP wrapper): its forward here must not touch DDP's hooks.
        """
        started = time.perf_counter()
        was_training = policy.training
        policy.eval()
        sums = {VAL_L1: 0.0, VAL_CURRENT_L1: 0.0, VAL_NEXT_L1: 0.0, VAL_RETENTION: 0.0}
        seen = 0
        try:
            with torch.no_grad():
                for cpu_batch in self.loader:
                    batch = cpu_batch.to(self.device)
                    with training_autocast(self.device):
                        out = policy(batch)
                    errors = (out.actions.float() - batch.actions).abs()
                    size = len(batch)
                    sums[VAL_L1] += float(errors.mean()) * size
                    sums[VAL_CURRENT_L1] += float(errors[:, 0].mean()) * size
                    sums[VAL_NEXT_L1] += float(errors[:, 1:].mean()) * size
                    if anchor is not None:
                        with training_autocast(self.device):
                            features = retention_features(out.vlm, craft_cfg, anchor.num_layers)
                            anchor_features = anchor.features(batch)
                        sums[VAL_RETENTION] += float(retention_loss(features, anchor_features).loss) * size
                    seen += size
                    if time.perf_counter() - started >= self.time_limit_s:
                        break
        finally:
            policy.train(was_training)
        if seen == 0:
            raise ValueError("validation read no held-out frame: raise --heldout_episode_fraction")
        if anchor is None:
            del sums[VAL_RETENTION]
        result = {key: total / seen for key, total in sums.items()}
        result[VAL_SAMPLES] = float(seen)
        result[VAL_SECONDS] = round(time.perf_counter() - started, 3)
        return result
