"""Tiny random-weight SD3.5 and FLUX.1 pipelines: built on the CPU, generating with flow-matching
Euler, saved as diffusers folders that are detected as their family and reload offline to the same
images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from easel_contracts.families import ModelFamily, detect_diffusers_folder
from easel_inference.flow_builder import (
    FLOW_FAMILIES,
    build_flow_pipeline,
    build_t5_tokenizer,
    save_flow_diffusers,
)


def _generate(pipe) -> np.ndarray:
    return pipe("a red fox in the snow", num_inference_steps=2, height=64, width=64,
                generator=torch.Generator().manual_seed(3), output_type="np").images


@pytest.mark.parametrize("family", FLOW_FAMILIES, ids=lambda f: f.value)
def test_flow_family_folder_is_detected_and_reloads_to_the_same_images(family, tmp_path):
    pipe = build_flow_pipeline(family, seed=4)
    before = _generate(pipe)
    folder = save_flow_diffusers(pipe, tmp_path / "model")
    assert detect_diffusers_folder(folder).family is family
    reloaded = DiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    assert type(reloaded) is type(pipe)
    after = _generate(reloaded)
    assert before.shape == (1, 64, 64, 3) and np.isfinite(before).all()
    np.testing.assert_allclose(after, before, atol=1e-5)


def test_flow_families_use_the_flow_matching_euler_scheduler():
    pipe = build_flow_pipeline(ModelFamily.FLUX_SCHNELL)
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"


def test_toy_t5_tokenizer_ends_with_eos_and_pads_with_pad():
    tokenizer = build_t5_tokenizer()
    ids = tokenizer("a red fox", padding="max_length", max_length=12).input_ids
    assert tokenizer.eos_token_id in ids and ids[-1] == tokenizer.pad_token_id
