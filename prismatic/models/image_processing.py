"""Image processor of the fused backbone ("resize-naive"): exact Prismatic normalisation, batched in torch.

Each image is resized to 224x224 (bicubic, antialiased, as torchvision does on PIL images; skipped when it is
already 224x224), scaled to [0, 1], then normalised twice: with the DINO statistics for the first 3 channels and the
SigLIP statistics for the next 3. n images per sample become `pixel_values` of shape (6n, 224, 224).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from prismatic.models.presets import DINO_MEAN, DINO_STD, SIGLIP_MEAN, SIGLIP_STD

ImageLike = Image.Image | np.ndarray | torch.Tensor


def _to_uint8_hwc(image: ImageLike, size: int) -> torch.Tensor:
    if isinstance(image, Image.Image):
        pil = image.convert("RGB")
    else:
        array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
            raise ValueError(f"expected a uint8 (H, W, 3) image, got dtype {array.dtype} shape {array.shape}")
        if array.shape[:2] == (size, size):
            return torch.from_numpy(np.ascontiguousarray(array))
        pil = Image.fromarray(array)
    if pil.size != (size, size):
        pil = pil.resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy())


class PrismaticImageProcessor:
    """uint8 RGB images -> normalised `pixel_values` for the DINO + SigLIP backbone."""

    def __init__(self, image_size: int = 224) -> None:
        self.image_size = image_size
        mean = torch.tensor([DINO_MEAN, SIGLIP_MEAN]).view(2, 3, 1, 1)
        std = torch.tensor([DINO_STD, SIGLIP_STD]).view(2, 3, 1, 1)
        # (x / 255 - mean) / std == x * scale + shift
        self._scale = 1.0 / (255.0 * std)
        self._shift = -mean / std

    def normalize_uint8(self, images: torch.Tensor) -> torch.Tensor:
        """(..., n, H, W, 3) uint8 already at `image_size` -> (..., 6n, H, W) float32."""
        if images.dtype != torch.uint8 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 (..., n, H, W, 3) images, got {images.dtype} {tuple(images.shape)}")
        if images.shape[-3:-1] != (self.image_size, self.image_size):
            raise ValueError(f"images must be {self.image_size}x{self.image_size}, got {tuple(images.shape[-3:-1])}")
        # channels-first while still uint8 (a quarter of the bytes of a strided float copy), then one fused pass
        chw = images.movedim(-1, -3).contiguous().unsqueeze(-4).float()  # (..., n, 1, 3, H, W)
        out = torch.addcmul(self._shift, chw, self._scale)  # (..., n, 2, 3, H, W): DINO then SigLIP
        return out.flatten(-5, -3)  # (..., 6n, H, W)

    def __call__(self, images: ImageLike | Sequence[ImageLike]) -> torch.Tensor:
        """One image or the n images of one sample -> (6n, 224, 224)."""
        if isinstance(images, ImageLike):
            images = [images]
        stacked = torch.stack([_to_uint8_hwc(im, self.image_size) for im in images])
        return self.normalize_uint8(stacked)
