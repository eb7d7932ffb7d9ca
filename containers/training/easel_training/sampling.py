"""Images from the base pipeline: generated class images and preview images."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from easel_training.plan import mix_seed

CLASS_IMAGE_PATTERN = "class-{index:05d}.png"
GENERATION_BATCH = 4


def _generators(device: torch.device, seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(seed) for seed in seeds]


@torch.no_grad()
def generate_class_images(pipe: Any, *, prompt: str, indices: list[int], folder: Path,
                          resolution: int, steps: int, seed: int, device: torch.device,
                          autocast: contextlib.AbstractContextManager | None = None,
                          should_stop=lambda: False) -> None:
    """Write ``class-<index>.png`` for each index, in small batches (resumable: each file is
    written whole, so a restarted job generates only what is missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    pipe.set_progress_bar_config(disable=True)
    for start in range(0, len(indices), GENERATION_BATCH):
        if should_stop():
            return
        chunk = indices[start:start + GENERATION_BATCH]
        generators = _generators(device, [mix_seed(seed, "class-image", i) for i in chunk])
        with autocast or contextlib.nullcontext():
            images = pipe(prompt=[prompt] * len(chunk), num_inference_steps=steps,
                          height=resolution, width=resolution, generator=generators,
                          output_type="pil").images
        for index, image in zip(chunk, images, strict=True):
            target = folder / CLASS_IMAGE_PATTERN.format(index=index)
            tmp = target.with_name(f".{target.name}.tmp")
            image.save(tmp, format="PNG")
            tmp.replace(target)


@torch.no_grad()
def write_preview(pipe: Any, *, prompt: str | None = None,
                  conditioning: dict[str, torch.Tensor] | None = None, path: Path,
                  resolution_hw: tuple[int, int], steps: int, guidance_scale: float, seed: int,
                  device: torch.device,
                  autocast: contextlib.AbstractContextManager | None = None) -> Path:
    """One preview image from ``prompt``, or from ``conditioning`` (the pipeline's
    ``prompt_embeds``-style arguments, for a job that freed its text encoders)."""
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator(device=device).manual_seed(seed)
    inputs = conditioning if conditioning is not None else {"prompt": prompt}
    with autocast or contextlib.nullcontext():
        image = pipe(**inputs, num_inference_steps=steps, guidance_scale=guidance_scale,
                     height=resolution_hw[0], width=resolution_hw[1], generator=generator,
                     output_type="pil").images[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    tmp.replace(path)
    return path
