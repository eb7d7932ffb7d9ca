"""LoRAs on SD3.5 and FLUX.1 (tiny models, CPU), in the kohya (original module names, fused qkv)
and diffusers/PEFT formats: fused into the weights, restored bit for bit, changing the image."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from easel_contracts.families import ModelFamily
from easel_inference.errors import BadRequest
from easel_inference.flow_builder import build_flow_pipeline
from easel_inference.flow_keys import to_original
from easel_inference.lora import LoraFuser, LoraLibrary, LoraUse
from easel_inference.lora_builder import random_flow_diffusers_lora, random_flow_kohya_lora

FAMILIES = [ModelFamily.FLUX_DEV, ModelFamily.SD35_MEDIUM]


@pytest.fixture(scope="module", params=FAMILIES, ids=lambda f: f.value)
def flow(request, tmp_path_factory):
    """A tiny pipeline of the family and a library holding one LoRA of each format."""
    pipe = build_flow_pipeline(request.param, seed=8)
    folder = tmp_path_factory.mktemp("lora")
    save_file(random_flow_kohya_lora(pipe), str(folder / "kohya.safetensors"))
    save_file(random_flow_diffusers_lora(pipe), str(folder / "peft.safetensors"))
    return pipe, LoraLibrary(folder), _image(pipe)


def _weights(pipe) -> dict[str, torch.Tensor]:
    state = {f"transformer.{k}": v.clone() for k, v in pipe.transformer.state_dict().items()}
    state.update({f"te.{k}": v.clone() for k, v in pipe.text_encoder.state_dict().items()})
    return state


def _image(pipe) -> torch.Tensor:
    return torch.from_numpy(pipe("a fox", num_inference_steps=1, height=64, width=64,
                                 generator=torch.Generator().manual_seed(1),
                                 output_type="np").images)


@pytest.mark.parametrize("name", ["kohya", "peft"])
def test_fused_lora_changes_the_image_and_restores_the_weights_bit_exactly(flow, name):
    pipe, library, image = flow
    before = _weights(pipe)
    fuser = LoraFuser(pipe)
    fuser.apply([LoraUse(name, 1.0, 1.0)], library)
    changed = [key for key, value in _weights(pipe).items() if not torch.equal(value, before[key])]
    assert any(key.startswith("transformer.") for key in changed)
    assert not torch.allclose(_image(pipe), image)
    fuser.restore()
    after = _weights(pipe)
    assert all(torch.equal(after[key], before[key]) for key in before)


def test_kohya_lora_on_fused_original_modules_adds_its_delta_there(flow):
    """A kohya LoRA names original modules (a fused qkv, FLUX's linear1, the final AdaLN whose
    halves swap): fused into the diffusers modules, the original tensor moves by up @ down x
    alpha / rank, exactly as a single-file tool would apply it."""
    pipe, library, _ = flow
    kind = "flux" if type(pipe).__name__.startswith("Flux") else "sd3"
    base = to_original(kind, pipe.transformer.state_dict())
    state, _ = library.load("kohya")
    fuser = LoraFuser(pipe)
    fuser.apply([LoraUse("kohya", 0.5, 0.5)], library)
    fused = to_original(kind, pipe.transformer.state_dict())
    fuser.restore()
    prefix = "model.diffusion_model." if kind == "sd3" else ""
    checked = 0
    for key in state:
        if not key.startswith("lora_unet_") or not key.endswith(".lora_down.weight"):
            continue
        stem = key[: -len(".lora_down.weight")]
        original = next(k for k in base if k.endswith(".weight")
                        and k.removeprefix(prefix)[: -len(".weight")].replace(".", "_")
                        == stem.removeprefix("lora_unet_"))
        delta = state[stem + ".lora_up.weight"] @ state[key] * (
            float(state[stem + ".alpha"]) / state[key].shape[0]) * 0.5
        torch.testing.assert_close(fused[original] - base[original], delta, atol=1e-5, rtol=1e-4)
        checked += 1
    assert checked >= 8


def test_a_lora_for_another_model_is_refused(flow):
    pipe, library, _ = flow
    flux = type(pipe).__name__.startswith("Flux")
    other = build_flow_pipeline(ModelFamily.SD35_LARGE if flux else ModelFamily.FLUX_DEV)

    with pytest.raises(BadRequest, match="another base model"):
        LoraFuser(other).apply([LoraUse("kohya", 1.0, 1.0)], library)


def test_fused_flux_peft_lora_matches_stock_diffusers_loading_it(tmp_path):
    """The diffusers-format file is one stock diffusers loads (FluxPipeline.load_lora_weights),
    and Easel's fused result equals stock diffusers' unfused PEFT result at the same weight."""
    pipe = build_flow_pipeline(ModelFamily.FLUX_DEV, seed=9)
    save_file(random_flow_diffusers_lora(pipe), str(tmp_path / "peft.safetensors"))
    base = _image(pipe)
    LoraFuser(pipe).apply([LoraUse("peft", 0.7, 0.7)], LoraLibrary(tmp_path))
    stock = build_flow_pipeline(ModelFamily.FLUX_DEV, seed=9)
    stock.load_lora_weights(str(tmp_path), weight_name="peft.safetensors", adapter_name="peft")
    stock.set_adapters(["peft"], adapter_weights=[0.7])
    expected, actual = _image(stock), _image(pipe)
    effect = (expected - base).abs().max()
    assert effect > 1e-2  # the LoRA does something
    # fused (W + dW) vs unfused (W x + B A x): float32 rounding only, far below the effect
    assert (actual - expected).abs().max() < effect / 20
