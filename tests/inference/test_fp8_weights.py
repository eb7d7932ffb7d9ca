"""EASEL_FP8_WEIGHTS: the SD3.5 / FLUX.1 transformer stored in float8, its measured deviation,
and LoRAs refused on it (tiny random-weight models on CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from easel_contracts.families import ModelFamily
from easel_inference.errors import BadRequest
from easel_inference.flow_builder import (
    build_flow_pipeline,
    save_flow_diffusers,
    save_flow_single_file,
)
from easel_inference.flow_loader import has_fp8_weights
from easel_inference.loader import load_pipeline
from easel_inference.lora import LoraFuser, LoraLibrary, LoraUse
from easel_inference.lora_builder import random_flow_kohya_lora
from easel_inference.pipelines import PipelineManager, wants_fp8
from easel_inference.settings import Settings, SettingsError

# PSNR floor of an FP8-weights image against the same seed's full-precision image, on the tiny
# models (measured 50-51 dB FLUX.1, 55 dB SD3.5 on CPU); the README gives the GPU figures
PSNR_FLOOR_DB = 40.0
MODELS = {"flux": "flux.safetensors", "sd35": "sd35"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``flux`` (FLUX.1 dev, single file and its parts) and ``sd35`` (medium, diffusers)."""
    root = tmp_path_factory.mktemp("fp8-model")
    save_flow_single_file(build_flow_pipeline(ModelFamily.FLUX_DEV, seed=1), root, "flux")
    save_flow_diffusers(build_flow_pipeline(ModelFamily.SD35_MEDIUM, seed=2),
                        root / "Stable-diffusion" / "sd35")
    return root


def _load(model_dir: Path, name: str, *, fp8: bool):
    pipe = load_pipeline(model_dir / "Stable-diffusion" / MODELS[name], fp8=fp8)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image(pipe) -> np.ndarray:
    return pipe("a red fox in the snow", num_inference_steps=4, height=64, width=64,
                generator=torch.Generator().manual_seed(5), output_type="np").images[0]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


@pytest.mark.parametrize("name", list(MODELS))
def test_fp8_stores_the_transformer_in_float8_and_nothing_else(model_dir, name):
    pipe = _load(model_dir, name, fp8=True)
    dtypes = {p.dtype for p in pipe.transformer.parameters()}
    assert torch.float8_e4m3fn in dtypes
    assert {p.dtype for p in pipe.vae.parameters()} == {torch.float32}
    assert {p.dtype for p in pipe.text_encoder.parameters()} == {torch.float32}


@pytest.mark.parametrize("name", list(MODELS))
def test_fp8_image_deviates_measurably_but_stays_above_the_psnr_floor(model_dir, name):
    full, fp8 = _image(_load(model_dir, name, fp8=False)), _image(_load(model_dir, name, fp8=True))
    psnr = _psnr(full, fp8)
    assert psnr != float("inf"), "FP8 weights changed nothing: were they applied?"
    assert psnr > PSNR_FLOOR_DB


def test_without_the_option_the_transformer_keeps_its_serving_dtype(model_dir):
    assert not has_fp8_weights(_load(model_dir, "flux", fp8=False))


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.view(torch.uint8) if tensor.dtype == torch.float8_e4m3fn else tensor


def test_a_lora_on_an_fp8_transformer_is_refused_and_the_weights_stay(model_dir, tmp_path):
    pipe = _load(model_dir, "flux", fp8=True)
    save_file(random_flow_kohya_lora(pipe), str(tmp_path / "style.safetensors"))
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    fuser = LoraFuser(pipe)
    with pytest.raises(BadRequest, match="stores in FP8 .*EASEL_FP8_WEIGHTS=off"):
        fuser.apply([LoraUse("style", 1.0, 1.0)], LoraLibrary(tmp_path))
    after = pipe.transformer.state_dict()
    assert all(torch.equal(_bits(before[k]), _bits(after[k])) for k in before)
    assert fuser.active == ()


def test_the_manager_loads_a_flow_model_with_fp8_weights_when_set_on(model_dir):
    manager = PipelineManager(Settings(model_dir=model_dir, fp8_weights="on"))
    assert has_fp8_weights(manager.get("flux").pipe)


def test_fp8_weights_are_off_unless_set():
    assert Settings.from_env({}).fp8_weights == "off"
    assert Settings.from_env({"EASEL_FP8_WEIGHTS": "auto"}).fp8_weights == "auto"


def test_an_unknown_fp8_setting_is_refused_with_its_choices():
    with pytest.raises(SettingsError, match="EASEL_FP8_WEIGHTS must be one of auto, on, off"):
        Settings.from_env({"EASEL_FP8_WEIGHTS": "yes"})


def _auto(device: str, gpu_gib: float | None, offload: bool = False) -> bool:
    return wants_fp8("auto", device=device, family=ModelFamily.FLUX_DEV,
                     model_bytes=34 * 10**9, offload=offload, gpu_gib=gpu_gib)


def test_auto_turns_fp8_on_where_16_bit_weights_do_not_fit_the_gpu():
    assert _auto("cuda", 22.0, offload=True)


def test_auto_keeps_16_bit_weights_where_they_fit_the_gpu():
    assert not _auto("cuda", 44.0)


def test_auto_is_off_on_cpu():
    assert not _auto("cpu", None)


def test_a_text_encoder_only_lora_still_applies_on_an_fp8_model(model_dir, tmp_path):
    pipe = _load(model_dir, "flux", fp8=True)
    save_file(random_flow_kohya_lora(pipe), str(tmp_path / "style.safetensors"))
    encoders = [pipe.text_encoder, pipe.text_encoder_2]
    before = [{k: v.clone() for k, v in e.state_dict().items()} for e in encoders]
    fuser = LoraFuser(pipe)
    fuser.apply([LoraUse("style", 1.0, 0.0)], LoraLibrary(tmp_path))  # text weight 1, unet 0
    changed = [k for e, old in zip(encoders, before, strict=True)
               for k, v in e.state_dict().items() if not torch.equal(old[k], v)]
    assert fuser.active and changed
