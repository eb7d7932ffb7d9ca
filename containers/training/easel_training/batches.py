"""Turning the plan's sample slots into one UNet training batch on the device.

Every random choice of a sample (flip, crop window, latent sample, timestep, noise) comes from
that sample's own seed, so the batch does not depend on the process count or on where a resumed
job started. Nothing here copies from host to device inside the step: cached latents and prompt
encodings are already on the device and random numbers are drawn there.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

from easel_training.flow_schedule import FlowSchedule
from easel_training.geometry import LATENT_STRIDE, Placement
from easel_training.latents import LatentStore
from easel_training.plan import SampleSlot, mix_seed
from easel_training.text import PromptEncoding


@dataclass
class TrainingImage:
    """A concept or class image, ready to be encoded."""

    key: str                                   # cache key prefix, unique per image
    placement: Placement
    prompt_index: int
    original_hw: tuple[int, int]
    center_crop_px: tuple[int, int]            # (top, left) of the encoded window
    pixels: Callable[[bool, tuple[int, int]], torch.Tensor]  # (flip, encode_hw) -> [3,H,W]


@dataclass
class Batch:
    noisy_latents: torch.Tensor
    timesteps: torch.Tensor
    target: torch.Tensor
    prompt_indices: list[int]
    time_ids: torch.Tensor | None
    num_instance: int


class NoiseSchedule:
    """The DDPM forward process of the base model's scheduler, precomputed on the device."""

    def __init__(self, alphas_cumprod: torch.Tensor, *, prediction_type: str,
                 device: torch.device) -> None:
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"unsupported prediction type {prediction_type!r}")
        alphas = alphas_cumprod.to(device, torch.float32)
        self.sqrt_alpha = alphas.sqrt()
        self.sqrt_one_minus_alpha = (1.0 - alphas).sqrt()
        self.num_timesteps = alphas.shape[0]
        self.prediction_type = prediction_type
        self.device = device

    def draw(self, generator: torch.Generator, latent_hw: torch.Size) -> torch.Tensor:
        """One sample's timestep (uniform over the DDPM steps), shape [1]."""
        del latent_hw
        return torch.randint(0, self.num_timesteps, (1,), generator=generator,
                             device=self.device)

    def noisy_and_target(self, latents: torch.Tensor, noise: torch.Tensor,
                         timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.sqrt_alpha[timesteps].view(-1, 1, 1, 1)
        s = self.sqrt_one_minus_alpha[timesteps].view(-1, 1, 1, 1)
        noisy = a * latents + s * noise
        target = noise if self.prediction_type == "epsilon" else a * noise - s * latents
        return noisy, target


class BatchBuilder:
    def __init__(self, *, images: list[TrainingImage], class_images: list[TrainingImage],
                 store: LatentStore, schedule: NoiseSchedule | FlowSchedule, device: torch.device,
                 random_flip: bool, noise_offset: float, sdxl: bool) -> None:
        self.images = images
        self.class_images = class_images
        self.store = store
        self.schedule = schedule
        self.device = device
        self.random_flip = random_flip
        self.noise_offset = noise_offset
        self.sdxl = sdxl
        self.generator = torch.Generator(device=device)
        self._time_ids: dict[tuple[int, ...], torch.Tensor] = {}

    def _time_id_tensor(self, values: tuple[int, ...]) -> torch.Tensor:
        if values not in self._time_ids:
            self._time_ids[values] = torch.tensor(values, dtype=torch.float32,
                                                  device=self.device)
        return self._time_ids[values]

    def _sample(self, image: TrainingImage, seed: int, target_hw: tuple[int, int],
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, ...]]:
        rng = random.Random(seed)
        flip = self.random_flip and rng.random() < 0.5
        placement = image.placement
        encode_hw = placement.encode_hw if placement.target_hw == target_hw else target_hw
        mean, std = self.store.distribution(
            (image.key, flip, encode_hw), lambda: image.pixels(flip, encode_hw))
        self.generator.manual_seed(seed)
        latents = self.store.sample(mean, std, self.generator)
        crop_top, crop_left = image.center_crop_px
        if encode_hw != target_hw:  # random crop on the latent grid
            rows = (encode_hw[0] - target_hw[0]) // LATENT_STRIDE
            cols = (encode_hw[1] - target_hw[1]) // LATENT_STRIDE
            top, left = rng.randint(0, rows), rng.randint(0, cols)
            h, w = target_hw[0] // LATENT_STRIDE, target_hw[1] // LATENT_STRIDE
            latents = latents[:, top:top + h, left:left + w]
            crop_top, crop_left = top * LATENT_STRIDE, left * LATENT_STRIDE
        timestep = self.schedule.draw(self.generator, latents.shape[-2:])
        noise = torch.randn(latents.shape, generator=self.generator, device=self.device)
        if self.noise_offset:
            offset = torch.randn((latents.shape[0], 1, 1), generator=self.generator,
                                 device=self.device)
            noise = noise + self.noise_offset * offset
        time_ids = (*image.original_hw, crop_top, crop_left, *target_hw)
        return latents, noise, timestep, time_ids

    def build(self, slots: list[SampleSlot]) -> Batch:
        latents, noises, timesteps, prompts, time_ids = [], [], [], [], []
        parts = [(self.images[slot.image_index], slot.seed, None) for slot in slots]
        if self.class_images:
            parts += [
                (self.class_images[slot.class_index(len(self.class_images))],
                 mix_seed(slot.seed, "class"), self.images[slot.image_index].placement.target_hw)
                for slot in slots
            ]
        for image, seed, target_hw in parts:
            hw = target_hw or image.placement.target_hw
            lat, noise, t, ids = self._sample(image, seed, hw)
            latents.append(lat)
            noises.append(noise)
            timesteps.append(t)
            prompts.append(image.prompt_index)
            time_ids.append(self._time_id_tensor(ids))
        latent_batch = torch.stack(latents)
        noise_batch = torch.stack(noises)
        timestep_batch = torch.cat(timesteps)
        noisy, target = self.schedule.noisy_and_target(latent_batch, noise_batch, timestep_batch)
        return Batch(noisy_latents=noisy, timesteps=timestep_batch, target=target,
                     prompt_indices=prompts,
                     time_ids=torch.stack(time_ids) if self.sdxl else None,
                     num_instance=len(slots))


def gather_prompts(encoding: PromptEncoding, indices: list[int]) -> PromptEncoding:
    hidden = torch.stack([encoding.hidden[i] for i in indices])
    pooled = None
    if encoding.pooled is not None:
        pooled = torch.stack([encoding.pooled[i] for i in indices])
    return PromptEncoding(hidden, pooled)
