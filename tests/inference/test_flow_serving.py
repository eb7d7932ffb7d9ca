"""Serving SD3.5 and FLUX.1 (tiny random-weight models, CPU): loaded from a diffusers folder and
from a single file plus the ``text_encoder/`` layout, generating through the A1111 request shape
with the family's sampler, guidance and defaults; what the family cannot do is refused or noted."""

from __future__ import annotations

import base64
import io
import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from easel_contracts.families import SEPARATE_PARTS, T5_REAL_VOCAB, T5_TOKENIZER, ModelFamily
from easel_contracts.invocations import Img2ImgRequest, Txt2ImgRequest
from easel_inference.errors import BadRequest
from easel_inference.flow_builder import (
    build_flow_pipeline,
    build_t5_tokenizer,
    save_flow_diffusers,
    save_flow_single_file,
)
from easel_inference.flow_loader import CONFIG_METADATA_KEY
from easel_inference.generation import generate
from easel_inference.loader import ModelLoadError, load_pipeline
from easel_inference.lora import LoraLibrary
from easel_inference.pipelines import PipelineManager
from easel_inference.settings import Settings

SIDE = 64


@pytest.fixture(scope="module")
def flow_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``flux`` (schnell, single file + text_encoder/ + VAE/) and ``sd35`` (medium, diffusers)."""
    root = tmp_path_factory.mktemp("flow-model")
    save_flow_single_file(build_flow_pipeline(ModelFamily.FLUX_SCHNELL, seed=1), root, "flux")
    save_flow_diffusers(build_flow_pipeline(ModelFamily.SD35_MEDIUM, seed=2),
                        root / "Stable-diffusion" / "sd35")
    return root


@pytest.fixture(scope="module")
def served(flow_dir: Path):
    settings = Settings(model_dir=flow_dir, pipeline_budget=2, deadline_seconds=3600)
    return PipelineManager(settings), LoraLibrary(flow_dir / "Lora"), settings


def _run(served, request, task: str = "txt2img"):
    manager, library, settings = served
    answer = generate(request, task=task, manager=manager, library=library, settings=settings)
    return answer, json.loads(answer.info)


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def _request(model: str, **fields) -> Txt2ImgRequest:
    fields.setdefault("width", SIDE)
    fields.setdefault("height", SIDE)
    return Txt2ImgRequest(prompt="a red fox in the snow", seed=5,
                          override_settings={"sd_model_checkpoint": model}, **fields)


def test_flux_schnell_single_file_generates_with_its_family_defaults(served):
    answer, info = _run(served, _request("flux"))
    assert _pixels(answer.images[0]).shape == (SIDE, SIDE, 3)
    assert (info["steps"], info["cfg_scale"], info["sampler_name"]) == (4, 0.0, "Euler")
    assert "Steps: 4" in info["infotexts"][0]


def test_flux_ignores_a_negative_prompt_and_says_so(served):
    _, info = _run(served, _request("flux", steps=1, negative_prompt="blurry"))
    assert info["negative_prompt"] == ""
    assert any("no negative prompt" in note for note in info["notes"])


def test_sd35_keeps_its_negative_prompt_and_cfg(served):
    plain, info = _run(served, _request("sd35", steps=2, cfg_scale=5.0))
    negative, _ = _run(served, _request("sd35", steps=2, cfg_scale=5.0, negative_prompt="fog"))
    assert info["cfg_scale"] == 5.0 and info["notes"] == []
    assert plain.images[0] != negative.images[0]


def test_sd35_img2img_starts_from_the_init_image(served):
    def init(color):
        buffer = io.BytesIO()
        Image.new("RGB", (SIDE, SIDE), color).save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    def run(color):
        request = Img2ImgRequest(prompt="a fox", seed=3, steps=2, width=SIDE, height=SIDE,
                                 denoising_strength=0.5, init_images=[init(color)],
                                 override_settings={"sd_model_checkpoint": "sd35"})
        return _pixels(_run(served, request, task="img2img")[0].images[0])

    dark, bright = run((0, 0, 0)), run((255, 255, 255))
    assert dark.shape == (SIDE, SIDE, 3)
    assert bright.mean() > dark.mean()


def test_sd35_heun_is_its_flow_matching_heun(served):
    _, info = _run(served, _request("sd35", steps=2, sampler_name="Heun"))
    manager = served[0]
    assert type(manager.get("sd35").pipe.scheduler).__name__ == "FlowMatchHeunDiscreteScheduler"
    assert info["sampler_name"] == "Heun"


def test_a_sampler_with_no_flow_equivalent_is_refused_with_the_family_list(served):
    with pytest.raises(BadRequest, match=r"'DPM\+\+ 2M' has no equivalent for FLUX.1 schnell.*"
                                         r"use one of: Euler$"):
        _run(served, _request("flux", steps=1, sampler_name="DPM++ 2M"))


def test_a_side_the_patches_cannot_cover_is_refused(served, monkeypatch):
    """Released models have an 8x VAE and 2x2 patches: a side of 40 leaves half a patch."""
    pipe = served[0].get("flux").pipe
    monkeypatch.setattr(pipe, "vae_scale_factor", 8)
    with pytest.raises(BadRequest, match="width must be a multiple of 16 for FLUX.1 schnell"):
        _run(served, _request("flux", steps=1, width=72, height=64))


def test_controlnet_is_refused_for_flow_families(served):
    request = _request("sd35", steps=1, alwayson_scripts={
        "controlnet": {"args": [{"enabled": True, "model": "x"}]}})
    with pytest.raises(BadRequest, match="ControlNet is served for SD1.x, SD2.x and SDXL"):
        _run(served, request)


def _generate(pipe) -> np.ndarray:
    return pipe("a red fox", num_inference_steps=1, height=SIDE, width=SIDE,
                generator=torch.Generator().manual_seed(3), output_type="np").images


@pytest.mark.parametrize("family", [ModelFamily.FLUX_DEV, ModelFamily.SD35_LARGE],
                         ids=lambda f: f.value)
def test_single_file_layout_loads_to_the_same_images(family, tmp_path):
    pipe = build_flow_pipeline(family, seed=6)
    path = save_flow_single_file(pipe, tmp_path, "m")
    loaded = load_pipeline(path)
    assert type(loaded) is type(pipe)
    np.testing.assert_array_equal(_generate(loaded), _generate(pipe))


def test_single_file_without_a_part_it_needs_is_refused_naming_it(flow_dir, tmp_path):
    root = tmp_path / "model"
    shutil.copytree(flow_dir, root)
    (root / SEPARATE_PARTS["clip_l"]).unlink()
    with pytest.raises(ModelLoadError, match="FLUX.1 schnell checkpoint without "
                                             "text_encoder/clip_l.safetensors"):
        load_pipeline(root / "Stable-diffusion" / "flux.safetensors")


def test_real_size_t5_without_its_own_tokenizer_is_refused(flow_dir, tmp_path):
    """A T5 with T5-XXL's 32,128-token table and a toy spiece.model: refused, not run with a
    tokenizer whose ids mean other words."""
    root = tmp_path / "model"
    shutil.copytree(flow_dir, root)
    from transformers import T5Config, T5EncoderModel

    tokenizer = build_t5_tokenizer()
    config = T5Config(vocab_size=T5_REAL_VOCAB, d_model=32, d_kv=8, d_ff=37, num_layers=2,
                      num_heads=4, relative_attention_num_buckets=8,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    state = T5EncoderModel(config).state_dict()
    state.pop("encoder.embed_tokens.weight")
    save_file({k: v.contiguous() for k, v in state.items()}, str(root / SEPARATE_PARTS["t5xxl"]),
              metadata={CONFIG_METADATA_KEY: config.to_json_string()})
    assert (root / T5_TOKENIZER).is_file()
    with pytest.raises(ModelLoadError, match="real-size \\(32128 tokens\\).*ship T5's own "
                                             "spiece.model"):
        load_pipeline(root / "Stable-diffusion" / "flux.safetensors")


@contextmanager
def _serving(model_dir: Path, default_model: str, cache_dir: Path):
    """A ready server of ``model_dir`` (the CPU warm-up done) behind a test client."""
    from fastapi.testclient import TestClient
    from inference_support import wait_ready

    from easel_inference.app import create_app

    settings = Settings(model_dir=model_dir, default_model=default_model, pipeline_budget=2,
                        max_pixels=128 * 128, deadline_seconds=3600, lora_cache_dir=cache_dir)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="module")
def flux_client(flow_dir, tmp_path_factory):
    """A server of the flow models with FLUX.1 schnell as its default."""
    with _serving(flow_dir, "flux", tmp_path_factory.mktemp("cache")) as client:
        yield client


def test_server_warms_up_a_flux_default_model_and_serves_it_through_the_registry(flux_client):
    """Readiness (loading -> warming -> ready), the measured speed of the work cap, and a
    txt2img invocation on FLUX.1 schnell whose unset steps are the family's 4."""
    from inference_support import invoke

    from easel_contracts.invocations import MIN_SIDE

    options = invoke(flux_client, "options").json()
    # on the CPU the warm-up runs 1 step at the smallest side (Engine.warm_up_cpu)
    assert options["warmed_up"]["model"] == "flux"
    assert options["warmed_up"]["width"] == MIN_SIDE
    assert options["speed"]["model"] == "flux"
    answer = invoke(flux_client, "txt2img", {"prompt": "a fox", "width": 64, "height": 64,
                                             "seed": 1})
    assert answer.status_code == 200, answer.text
    info = json.loads(answer.json()["info"])
    assert info["steps"] == 4 and info["sd_model_name"] == "flux"


def test_a_server_of_flow_models_lists_only_their_flow_matching_samplers(flux_client):
    from inference_support import invoke

    listed = invoke(flux_client, "samplers").json()
    assert [entry["name"] for entry in listed] == ["Euler", "Heun"]  # FLUX.1 and SD3.5


@pytest.fixture(scope="module")
def mixed_client(flow_dir, tmp_path_factory):
    """A server whose endpoint has a UNet model (``tiny``, SD1.x) beside FLUX.1 and SD3.5."""
    from easel_inference.builder import build_model_dir

    root = tmp_path_factory.mktemp("mixed-model")
    shutil.copytree(flow_dir, root, dirs_exist_ok=True)
    build_model_dir(root, name="tiny", seed=3)
    with _serving(root, "tiny", tmp_path_factory.mktemp("cache")) as client:
        yield client


def _listed(client, payload=None) -> list[str]:
    from inference_support import invoke

    answer = invoke(client, "samplers", payload)
    assert answer.status_code == 200, answer.text
    return [entry["name"] for entry in answer.json()]


def test_a_mixed_endpoint_lists_only_flow_samplers_for_its_flux_checkpoint(mixed_client):
    from inference_support import invoke

    titles = {model["model_name"]: model["title"]
              for model in invoke(mixed_client, "sd-models").json()}
    assert _listed(mixed_client, {"checkpoint": titles["flux"]}) == ["Euler"]
    assert _listed(mixed_client, {"checkpoint": "sd35"}) == ["Euler", "Heun"]


def test_a_mixed_endpoint_lists_every_a1111_sampler_for_its_unet_checkpoint(mixed_client):
    from easel_inference.samplers import advertised_sampler_names

    assert _listed(mixed_client, {"checkpoint": "tiny"}) == advertised_sampler_names()


def test_a_mixed_endpoint_without_a_checkpoint_lists_every_a1111_sampler(mixed_client):
    from easel_inference.samplers import advertised_sampler_names

    assert _listed(mixed_client) == advertised_sampler_names()


def test_a_samplers_listing_for_a_checkpoint_the_endpoint_lacks_names_those_it_has(mixed_client):
    from inference_support import invoke

    answer = invoke(mixed_client, "samplers", {"checkpoint": "sdxl-base"})
    assert answer.status_code == 400
    body = answer.json()
    assert body["field"] == "checkpoint"
    assert "'sdxl-base' is not on this endpoint" in body["detail"]
    assert all(name in body["detail"] for name in ("flux", "sd35", "tiny"))


def test_text_encoder_offload_moves_each_encoder_in_for_its_pass_and_out_after(flow_dir):
    """EASEL_TEXT_ENCODER_OFFLOAD (the memory plan's choice): encoders live in host memory and
    each goes to the device for its own forward pass only."""
    pipe = load_pipeline(flow_dir / "Stable-diffusion" / "flux.safetensors", offload=True)
    moves: list[str] = []
    encoder = pipe.text_encoder_2
    original = encoder.to

    def recording(*args, **kwargs):
        moves.append(str(args[0] if args else kwargs.get("device")))
        return original(*args, **kwargs)

    encoder.to = recording
    pipe("a fox", num_inference_steps=1, height=SIDE, width=SIDE, max_sequence_length=32)
    assert moves == ["cpu", "cpu"]  # to the device (the CPU here) before, back to host after
    assert next(encoder.parameters()).device.type == "cpu"


def test_offload_is_read_from_the_environment():
    assert Settings.from_env({"EASEL_TEXT_ENCODER_OFFLOAD": "1"}).text_encoder_offload
    assert not Settings.from_env({}).text_encoder_offload


def test_the_unet_fast_path_leaves_a_flow_model_eager(flow_dir):
    manager = PipelineManager(Settings(model_dir=flow_dir, fast_path="on"))
    assert manager.get("sd35").fast_path.applied == []


def test_a_file_without_easel_configs_is_read_with_the_released_models_configs(tmp_path):
    """No Easel metadata: the shipped (full-size) configs apply, so a toy-size file is refused
    saying what does not fit instead of loading something else."""
    pipe = build_flow_pipeline(ModelFamily.FLUX_SCHNELL, seed=2)
    path = save_flow_single_file(pipe, tmp_path, "m", embed_configs=False)
    with pytest.raises(ModelLoadError, match="img_in.weight has 32 rows, the model built for it "
                                             "needs 3072.*another size"):
        load_pipeline(path)
