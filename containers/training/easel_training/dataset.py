"""The concept (and class) images of a job as training images with prompts and placements."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from easel_contracts.hyperparameters import HyperParameters

from easel_training.batches import TrainingImage
from easel_training.geometry import center_crop_offset, make_buckets, place_image
from easel_training.images import ImageRecord, open_rgb
from easel_training.latents import pixels_from_image
from easel_training.prompts import build_prompt, strip_filewords


@dataclass
class ConceptData:
    images: list[TrainingImage]
    class_images: list[TrainingImage]
    prompts: list[str]
    image_prompts: list[str]          # the training prompt of each concept image
    bucket_groups: list[list[int]]    # concept image indices sharing a training size
    resolution: int
    validation_prompt: str


def _pixels(record: ImageRecord, flip: bool, size_hw: tuple[int, int]) -> torch.Tensor:
    from easel_training.geometry import resize_and_center_crop

    pixels = pixels_from_image(resize_and_center_crop(open_rgb(record.path), size_hw))
    return pixels.flip(-1) if flip else pixels


def build_concept_data(*, hp: HyperParameters, records: list[ImageRecord],
                       class_records: list[ImageRecord], resolution: int) -> ConceptData:
    prompts: list[str] = []
    index_of: dict[str, int] = {}

    def prompt_index(prompt: str) -> int:
        if prompt not in index_of:
            index_of[prompt] = len(prompts)
            prompts.append(prompt)
        return index_of[prompt]

    buckets = make_buckets(resolution) if hp.bucketing else None
    images: list[TrainingImage] = []
    image_prompts: list[str] = []
    groups: dict[tuple[int, int], list[int]] = {}
    for index, record in enumerate(records):
        placement = place_image(record.width, record.height, resolution=resolution,
                                bucketing=hp.bucketing, center_crop=hp.center_crop,
                                buckets=buckets)
        prompt = build_prompt(hp.instance_prompt, record.caption)
        image_prompts.append(prompt)
        images.append(TrainingImage(
            key=f"concept-{index}", placement=placement, prompt_index=prompt_index(prompt),
            original_hw=(record.height, record.width),
            center_crop_px=center_crop_offset(record.width, record.height, placement.encode_hw),
            pixels=partial(_pixels, record)))
        groups.setdefault(placement.target_hw, []).append(index)
    class_images: list[TrainingImage] = []
    for index, record in enumerate(class_records):
        target = (resolution, resolution)
        placement = place_image(record.width, record.height, resolution=resolution,
                                bucketing=False, center_crop=True)
        prompt = build_prompt(hp.class_prompt, record.caption)
        class_images.append(TrainingImage(
            key=f"class-{index}", placement=placement, prompt_index=prompt_index(prompt),
            original_hw=(record.height, record.width),
            center_crop_px=center_crop_offset(record.width, record.height, target),
            pixels=partial(_pixels, record)))
    validation = hp.validation_prompt or strip_filewords(hp.instance_prompt)
    return ConceptData(images=images, class_images=class_images, prompts=prompts,
                       image_prompts=image_prompts,
                       bucket_groups=[groups[key] for key in sorted(groups)],
                       resolution=resolution, validation_prompt=validation)
