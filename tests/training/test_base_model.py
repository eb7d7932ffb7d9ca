"""The training job reads flow-family diffusers folders (SD3.5, FLUX.1) through the inference
server's loader, so it refuses what the server refuses, with the same reason."""

from __future__ import annotations

import pytest
import torch
from transformers import T5Config, T5EncoderModel

from easel_inference.flow_builder import build_flow_pipeline, save_flow_diffusers
from easel_training.base_model import load_base_model
from easel_training.errors import TrainingInputError


def _channel(tmp_path, pipe):
    save_flow_diffusers(pipe, tmp_path / "model" / "Stable-diffusion" / "tiny")
    return tmp_path / "model"


def test_a_flux_folder_loads_in_the_training_precision(tmp_path):
    channel = _channel(tmp_path, build_flow_pipeline("flux_schnell", seed=0))
    base = load_base_model(channel, tmp_path / "scratch", "", flow_dtype=torch.bfloat16)
    assert (base.family.value, base.arch, base.prediction_type) == ("flux_schnell", "flux",
                                                                    "flow")
    assert base.pipe.transformer.dtype == torch.bfloat16


def test_a_flux_folder_whose_t5_cannot_take_its_tokenizer_is_refused(tmp_path):
    pipe = build_flow_pipeline("flux_dev", seed=0)
    pieces = len(pipe.tokenizer_2)
    small = pipe.text_encoder_2.config.to_dict()
    small.update(vocab_size=pieces // 2)  # fewer embeddings than the tokenizer has pieces
    pipe.text_encoder_2 = T5EncoderModel(T5Config(**small)).eval()
    channel = _channel(tmp_path, pipe)
    with pytest.raises(TrainingInputError, match="do not belong together"):
        load_base_model(channel, tmp_path / "scratch", "")
