"""Offline evaluation on held-out episodes: action errors and representation drift against theta_0.

* Action L1 on the (B, 8, 7) chunks, normalised and un-normalised, for the current action and the next 7.
* Drift: the CRaFT retention loss of the checkpoint's anchor configuration, and linear CKA between the fine-tuned
  and the initial model's pooled features, per LLM layer, for the raw (vision) tokens and the action queries.
The held-out episodes are the last `--heldout_episode_fraction` of the episodes, read in order, so numbers are
comparable across runs of the same dataset; they are unseen only if the run was trained with that held-out fraction
(training uses every episode by default).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from craft import CRaFTConfig, linear_cka, masked_mean_pool, retention_loss
from prismatic.models.anchor import retention_features, token_masks
from prismatic.models.batch import PaddedCollatorForActionPrediction, RLDSBatchTransform
from prismatic.models.loaders import LoadedPolicy, load_base_vlm
from prismatic.models.tokenizer import load_tokenizer
from prismatic.models.vlm import PrismaticVLM, VLMOutput
from prismatic.vla.datasets import RLDSDataset, StreamConfig
from prismatic.vla.normalization import unnormalize


@dataclass
class OfflineSettings:
    data_root_dir: Path
    dataset_name: str
    heldout_episode_fraction: float
    max_samples: int = 1000
    batch_size: int = 8
    center_crop: bool = True
    device: str = "cpu"


class _Pooled:
    """Per-layer pooled features of one model, accumulated over batches."""

    def __init__(self) -> None:
        self.raw: dict[int, list[torch.Tensor]] = defaultdict(list)
        self.aq: dict[int, list[torch.Tensor]] = defaultdict(list)

    def add(self, out: VLMOutput) -> None:
        masks = token_masks(out)
        for layer, hidden in enumerate(out.hidden_states):
            self.raw[layer].append(masked_mean_pool(hidden, masks.vision).cpu())
            self.aq[layer].append(masked_mean_pool(hidden, masks.action_query).cpu())

    def matrix(self, kind: str, layer: int) -> torch.Tensor:
        return torch.cat((self.raw if kind == "raw" else self.aq)[layer])


def evaluate_offline(
    loaded: LoadedPolicy,
    base_vlm: PrismaticVLM,
    settings: OfflineSettings,
    craft_config: CRaFTConfig,
    tokenizer_dir: Path,
) -> dict[str, Any]:
    """Action errors and drift of `loaded` (fine-tuned) against `base_vlm` (theta_0) on held-out frames."""
    device = torch.device(settings.device)
    policy = loaded.policy.to(device).eval()
    base_vlm = base_vlm.to(device).eval()
    tokenizer = load_tokenizer(tokenizer_dir)
    stats = loaded.dataset_statistics.get(settings.dataset_name, None)
    stream = StreamConfig(
        data_root_dir=Path(settings.data_root_dir),
        dataset_name=settings.dataset_name,
        train=False,
        num_images=loaded.spec.num_images_in_input,
        use_heldout_episodes=True,
        center_crop=settings.center_crop,
        heldout_episode_fraction=settings.heldout_episode_fraction,
        statistics=loaded.dataset_statistics,
    )
    dataset = RLDSDataset.from_config(stream, RLDSBatchTransform(tokenizer))
    stats = stats or dataset.dataset_statistics[settings.dataset_name]
    loader = DataLoader(
        dataset, batch_size=settings.batch_size, collate_fn=PaddedCollatorForActionPrediction(tokenizer.pad_token_id)
    )
    kind = policy.robot.normalization
    errors: dict[str, list[np.ndarray]] = defaultdict(list)
    tuned, initial = _Pooled(), _Pooled()
    retention: list[float] = []
    num_layers = base_vlm.num_llm_layers
    seen = 0
    with torch.no_grad():
        for batch in loader:
            if seen >= settings.max_samples:
                break
            keep = min(len(batch), settings.max_samples - seen)
            batch = batch.head(keep)
            on_device = batch.to(device)
            out = policy(on_device)
            base_out = base_vlm(**on_device.vlm_inputs())
            pred = out.actions.float().cpu().numpy()
            target = batch.actions.numpy()
            norm_err = np.abs(pred - target)
            raw_err = np.abs(unnormalize(pred, stats["action"], kind) - unnormalize(target, stats["action"], kind))
            for name, err in (("normalized", norm_err), ("unnormalized", raw_err)):
                errors[f"{name}/current"].append(err[:, 0])
                errors[f"{name}/next"].append(err[:, 1:])
                errors[f"{name}/all"].append(err)
            feats = [retention_features(o, craft_config, num_layers) for o in (out.vlm, base_out)]
            retention.append(float(retention_loss(feats[0], feats[1]).loss) * keep)
            tuned.add(out.vlm)
            initial.add(base_out)
            seen += keep
    if seen < 2:
        raise ValueError(f"only {seen} held-out frames: raise --heldout_episode_fraction or use more data")
    return {
        "dataset": settings.dataset_name,
        "num_samples": seen,
        "heldout_episodes": len(dataset.info.selected_episodes[settings.dataset_name]),
        "action_l1": {key: float(np.concatenate(v).mean()) for key, v in sorted(errors.items())},
        "action_l1_per_dim_unnormalized": np.concatenate(errors["unnormalized/all"])
        .reshape(-1, pred.shape[-1])
        .mean(0)
        .tolist(),
        "retention_loss": sum(retention) / seen,
        "anchor": {
            "anchor_type": craft_config.anchor_type,
            "anchor_layer_idx": craft_config.anchor_layer_idx,
            "cr_token_mode": craft_config.cr_token_mode,
        },
        "cka": {
            kind_name: {
                str(layer): linear_cka(tuned.matrix(kind_name, layer), initial.matrix(kind_name, layer))
                for layer in range(num_layers + 1)
            }
            for kind_name in ("raw", "action_query")
        },
    }


def base_vlm_for(loaded: LoadedPolicy, base_vlm_path: str | Path | None) -> PrismaticVLM:
    path = base_vlm_path or loaded.spec.base_vlm_path
    if not path:
        raise ValueError(
            "the checkpoint records no base VLM: pass --base_vlm_path (the Prismatic VLM it was fine-tuned from)"
        )
    return load_base_vlm(path, num_images=loaded.spec.num_images_in_input)
