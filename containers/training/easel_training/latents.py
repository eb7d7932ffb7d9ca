"""Images to VAE latent distributions, cached so each image is encoded once per orientation.

The cache keeps the distribution (mean, std), not one sample, so each step still draws a fresh
latent sample as an uncached loop would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

Key = tuple[Any, ...]


def pixels_from_image(image: Image.Image) -> torch.Tensor:
    """[3, H, W] float32 in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div(127.5).sub(1.0)


class LatentStore:
    def __init__(self, vae: Any, device: torch.device, *, cache: bool = True) -> None:
        self.vae = vae
        self.device = device
        self.cache = cache
        self.scaling_factor = float(vae.config.scaling_factor)
        shift = getattr(vae.config, "shift_factor", None)
        self.shift_factor = float(shift) if shift is not None else 0.0
        self._store: dict[Key, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def _encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vae_dtype = next(self.vae.parameters()).dtype
        batch = pixels.unsqueeze(0).to(self.device, vae_dtype)
        dist = self.vae.encode(batch).latent_dist
        return dist.mean[0].float(), dist.std[0].float()

    def distribution(self, key: Key,
                     pixels: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if key in self._store:
            return self._store[key]
        encoded = self._encode(pixels())
        if self.cache:
            self._store[key] = encoded
        return encoded

    def sample(self, mean: torch.Tensor, std: torch.Tensor,
               generator: torch.Generator) -> torch.Tensor:
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return (mean + std * eps - self.shift_factor) * self.scaling_factor

    def __len__(self) -> int:
        return len(self._store)
