"""Validation during training (VLA-Adapter's `--use_val_set`): action L1 on the held-out episodes every `--val_freq`
steps, on the main process only, within `--val_time_limit` seconds.

Validation runs no collective operation, so the other processes simply wait at their next gradient all-reduce. The
held-out frames are read from the start each time, in order and centre-cropped like evaluation, so successive values
are measured on the same frames (as many as the time limit allows). With CRaFT's anchor, the drift on those frames is
logged too: the retention loss, and linear CKA between the policy's and the anchor's pooled features (raw tokens at
the anchor layer, action queries at the last layer, whichever the anchor type uses).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch
from torch.utils.data import DataLoader

from craft import CRaFTConfig, extract_features, linear_cka, retention_loss
from prismatic.models.anchor import Anchor, retention_features, token_masks
from prismatic.models.batch import PaddedCollatorForActionPrediction, PolicyBatch, RLDSBatchTransform
from prismatic.models.policy import VLAAdapterPolicy
from prismatic.models.precision import Precision
from prismatic.models.vlm import VLMOutput
from prismatic.training.metrics import VALIDATION_PREFIX
from prismatic.vla.datasets import RLDSDataset
from prismatic.vla.datasets.rlds.stream import StreamConfig

VAL_L1 = f"{VALIDATION_PREFIX}L1 Loss"
VAL_CURRENT_L1 = f"{VALIDATION_PREFIX}Curr Action L1 Loss"
VAL_NEXT_L1 = f"{VALIDATION_PREFIX}Next Actions L1 Loss"
VAL_RETENTION = f"{VALIDATION_PREFIX}Retention Loss"
VAL_CKA_RAW = f"{VALIDATION_PREFIX}CKA Raw"
VAL_CKA_AQ = f"{VALIDATION_PREFIX}CKA AQ"
CKA_KEYS = {"raw_only": VAL_CKA_RAW, "aq_only": VAL_CKA_AQ}  # the feature part (an anchor type) -> its metric
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

    def run(
        self, policy: VLAAdapterPolicy, anchor: Anchor | None, craft_cfg: CRaFTConfig, precision: Precision
    ) -> dict[str, float]:
        """Mean L1 (all, current, next actions) and, with an anchor, the retention loss and CKA, over the frames read in
        time.

        `policy` is the unwrapped module (never the DDP wrapper): its forward here must not touch DDP's hooks.
        """
        started = time.perf_counter()
        was_training = policy.training
        policy.eval()
        sums = {VAL_L1: 0.0, VAL_CURRENT_L1: 0.0, VAL_NEXT_L1: 0.0, VAL_RETENTION: 0.0}
        drift = _DriftFeatures(anchor, craft_cfg, precision) if anchor is not None else None
        seen = 0
        try:
            with torch.no_grad():
                for cpu_batch in self.loader:
                    batch = cpu_batch.to(self.device)
                    with precision.autocast():
                        out = policy(batch)
                    errors = (out.actions.float() - batch.actions).abs()
                    size = len(batch)
                    sums[VAL_L1] += float(errors.mean()) * size
                    sums[VAL_CURRENT_L1] += float(errors[:, 0].mean()) * size
                    sums[VAL_NEXT_L1] += float(errors[:, 1:].mean()) * size
                    if drift is not None:
                        sums[VAL_RETENTION] += drift.add(out.vlm, batch) * size
                    seen += size
                    if time.perf_counter() - started >= self.time_limit_s:
                        break
        finally:
            policy.train(was_training)
        if seen == 0:
            raise ValueError("validation read no held-out frame: raise --heldout_episode_fraction")
        if drift is None:
            del sums[VAL_RETENTION]
        result = {key: total / seen for key, total in sums.items()}
        if drift is not None:
            result.update(drift.cka())
        result[VAL_SAMPLES] = float(seen)
        result[VAL_SECONDS] = round(time.perf_counter() - started, 3)
        return result


class _DriftFeatures:
    """The retention loss of each validation batch, and the pooled features of the policy and the anchor kept for
    CKA over all the frames read (n x hidden size per part: small)."""

    def __init__(self, anchor: Anchor, craft_cfg: CRaFTConfig, precision: Precision) -> None:
        self.anchor, self.craft_cfg, self.precision = anchor, craft_cfg, precision
        parts = {"concat": ("raw_only", "aq_only"), "raw_only": ("raw_only",), "aq_only": ("aq_only",)}
        self.parts = parts[craft_cfg.anchor_type]
        self.policy_parts: dict[str, list[torch.Tensor]] = {part: [] for part in self.parts}
        self.anchor_parts: dict[str, list[torch.Tensor]] = {part: [] for part in self.parts}

    def _pooled(self, out: VLMOutput, part: str) -> torch.Tensor:
        return extract_features(
            out.hidden_states,
            token_masks(out),
            anchor_type=part,
            anchor_layer_idx=self.craft_cfg.anchor_layer_idx,
            cr_token_mode=self.craft_cfg.cr_token_mode,
            num_layers=self.anchor.num_layers,
        ).cpu()

    def add(self, out: VLMOutput, batch: PolicyBatch) -> float:
        """Record one batch; returns its retention loss."""
        with self.precision.autocast():
            anchor_out = self.anchor.forward(batch)
        features = retention_features(out, self.craft_cfg, self.anchor.num_layers)
        anchor_features = retention_features(anchor_out, self.craft_cfg, self.anchor.num_layers)
        for part in self.parts:
            self.policy_parts[part].append(self._pooled(out, part))
            self.anchor_parts[part].append(self._pooled(anchor_out, part))
        return float(retention_loss(features, anchor_features).loss)

    def cka(self) -> dict[str, float]:
        """Linear CKA per part (NaN with a single frame, where CKA is undefined)."""
        result = {}
        for part in self.parts:
            tuned, initial = torch.cat(self.policy_parts[part]), torch.cat(self.anchor_parts[part])
            result[CKA_KEYS[part]] = linear_cka(tuned, initial) if len(tuned) >= 2 else float("nan")
        return result
