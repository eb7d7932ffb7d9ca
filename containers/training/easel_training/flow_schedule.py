"""The rectified-flow forward process SD3.5 and FLUX.1 are trained on.

A sample at noise level ``sigma`` in (0, 1) is ``(1 - sigma) * x0 + sigma * noise`` and the
transformer predicts the velocity ``noise - x0``. Each sample's ``sigma`` is drawn logit-normal
(the sigmoid of a standard normal, as in the SD3 paper) and then shifted toward noise the way the
family's scheduler shifts its sampling steps: by the scheduler's ``shift`` (SD3.5: 3.0), or, where
the scheduler shifts by image size (``use_dynamic_shifting``, FLUX.1 dev), by
``exp(mu)`` with ``mu`` interpolated from the number of 2x2 latent patches, as the pipeline does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch


class FlowSchedule:
    def __init__(self, scheduler_config: Mapping[str, Any], *, device: torch.device) -> None:
        self.device = device
        self.dynamic = bool(scheduler_config.get("use_dynamic_shifting", False))
        self.shift = float(scheduler_config.get("shift", 1.0))
        self.base_seq = int(scheduler_config.get("base_image_seq_len", 256))
        self.max_seq = int(scheduler_config.get("max_image_seq_len", 4096))
        self.base_shift = float(scheduler_config.get("base_shift", 0.5))
        self.max_shift = float(scheduler_config.get("max_shift", 1.15))

    def shift_for(self, latent_hw: tuple[int, int] | torch.Size) -> float:
        if not self.dynamic:
            return self.shift
        patches = (int(latent_hw[0]) // 2) * (int(latent_hw[1]) // 2)
        slope = (self.max_shift - self.base_shift) / (self.max_seq - self.base_seq)
        return math.exp(self.base_shift + slope * (patches - self.base_seq))

    def draw(self, generator: torch.Generator, latent_hw: torch.Size) -> torch.Tensor:
        """One sample's ``sigma``, shape [1], float32."""
        u = torch.sigmoid(torch.randn((1,), generator=generator, device=self.device))
        shift = self.shift_for(latent_hw)
        return shift * u / (1.0 + (shift - 1.0) * u)

    @staticmethod
    def noisy_and_target(latents: torch.Tensor, noise: torch.Tensor,
                         sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = sigmas.view(-1, *([1] * (latents.dim() - 1)))
        return (1.0 - s) * latents + s * noise, noise - latents
