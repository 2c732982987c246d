"""Fused DINOv2 + SigLIP vision backbone (timm), as in `prism-qwen25-extra-dinosiglip-224px-0_5b`.

Features are the output of the second-to-last transformer block, without the final norm and without prefix tokens
(CLS / registers): 256 patch tokens per 224px image, DINO channels then SigLIP channels. Several images are
concatenated along the token axis. Parameter names follow the HF checkpoints of VLA-Adapter: `featurizer` (DINOv2),
`fused_featurizer` (SigLIP), and timm's LayerScale `gamma` stored as `scale_factor` (HF would rename `gamma`).
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from timm.models.vision_transformer import LayerScale
from torch import nn

from prismatic.models.presets import ViTSpec

CHANNELS_PER_IMAGE = 6  # 3 DINO-normalised + 3 SigLIP-normalised channels


class HFLayerScale(nn.Module):
    """timm's LayerScale with the parameter named `scale_factor`, matching the HF-format checkpoints."""

    def __init__(self, gamma: torch.Tensor) -> None:
        super().__init__()
        self.scale_factor = nn.Parameter(gamma.detach().clone())

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden * self.scale_factor


def create_featurizer(spec: ViTSpec, image_size: int = 224) -> nn.Module:
    """A timm ViT built offline (`pretrained=False`); weights come from checkpoints, never from the Hub."""
    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0, "img_size": image_size, **spec.overrides}
    model = timm.create_model(spec.timm_id, **kwargs)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LayerScale):
                setattr(module, name, HFLayerScale(child.gamma))
    return model


def feature_block_index(featurizer: nn.Module) -> int:
    """Index of the block whose output is used: the second-to-last one."""
    return len(featurizer.blocks) - 2


class FusedVisionBackbone(nn.Module):
    """DINOv2 (`featurizer`) + SigLIP (`fused_featurizer`) patch features, concatenated on the channel axis."""

    def __init__(self, dino: ViTSpec, siglip: ViTSpec, image_size: int = 224, num_images: int = 1) -> None:
        super().__init__()
        self.featurizer = create_featurizer(dino, image_size)
        self.fused_featurizer = create_featurizer(siglip, image_size)
        self.embed_dim = self.featurizer.embed_dim + self.fused_featurizer.embed_dim
        self.num_images = num_images

    @property
    def num_patches_per_image(self) -> int:
        return int(self.featurizer.patch_embed.num_patches)

    def set_num_images(self, num_images: int) -> None:
        if num_images not in (1, 2, 3):
            raise ValueError(f"num_images_in_input must be 1, 2 or 3 (got {num_images})")
        self.num_images = num_images

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.featurizer.set_grad_checkpointing(enable)
        self.fused_featurizer.set_grad_checkpointing(enable)

    @staticmethod
    def _features(featurizer: nn.Module, images: torch.Tensor) -> torch.Tensor:
        # forward_intermediates stops after the requested block and drops prefix tokens; no final norm.
        (out,) = featurizer.forward_intermediates(
            images,
            indices=[feature_block_index(featurizer)],
            norm=False,
            stop_early=True,
            output_fmt="NLC",
            intermediates_only=True,
        )
        return out

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 6 * num_images, H, W) -> (B, num_images * 256, dino_dim + siglip_dim)."""
        batch, channels, height, width = pixel_values.shape
        if channels != CHANNELS_PER_IMAGE * self.num_images:
            raise ValueError(
                f"pixel_values has {channels} channels but the model expects {CHANNELS_PER_IMAGE} per image x "
                f"{self.num_images} image(s) (num_images_in_input)"
            )
        images = pixel_values.reshape(batch * self.num_images, CHANNELS_PER_IMAGE, height, width)
        dino = self._features(self.featurizer, images[:, :3])
        siglip = self._features(self.fused_featurizer, images[:, 3:])
        patches = torch.cat([dino, siglip], dim=2)  # (B * n, 256, D)
        return patches.reshape(batch, self.num_images * patches.shape[1], patches.shape[2])

    def used_blocks(self) -> dict[str, int]:
        """Number of leading blocks whose outputs reach the features (the last block is never used)."""
        return {
            "featurizer": feature_block_index(self.featurizer) + 1,
            "fused_featurizer": feature_block_index(self.fused_featurizer) + 1,
        }
