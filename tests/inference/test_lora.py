"""LoRA: tag parsing, both key formats, fusing, weight 0, exact restore, S3 library (moto)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import boto3
import numpy as np
import pytest
import torch
from inference_fakes import two_lora_library
from inference_support import invoke, small
from moto import mock_aws
from PIL import Image
from safetensors.torch import save_file

from easel_inference.builder import build_pipeline
from easel_inference.errors import BadRequest, NotFound
from easel_inference.lora import LoraFuser, LoraLibrary, LoraUse, parse_lora_tags
from easel_inference.lora_builder import random_kohya_lora
from easel_inference.lora_format import LoraFormatError, ModuleIndex, parse_lora


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def _weights(pipe) -> dict[str, torch.Tensor]:
    state = {}
    for component in ("unet", "text_encoder", "text_encoder_2"):
        model = getattr(pipe, component, None)
        if model is not None:
            state.update({f"{component}.{k}": v.clone() for k, v in model.state_dict().items()})
    return state


def _generate(pipe) -> np.ndarray:
    return pipe(
        "a boat", num_inference_steps=2, height=64, width=64, output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline(arch="sd15", seed=11)


@pytest.fixture()
def library(tmp_path: Path, pipe) -> LoraLibrary:
    return two_lora_library(pipe, tmp_path)


def test_parse_lora_tags_forms() -> None:
    prompt, uses = parse_lora_tags("a cat <lora:one> and <lora:two:0.5>, <lora:three:0.2:0.8>")
    assert prompt == "a cat and ,"
    assert uses == [LoraUse("one", 1.0, 1.0), LoraUse("two", 0.5, 0.5), LoraUse("three", 0.2, 0.8)]


@pytest.mark.parametrize("tag", ["<lora:a/b:1>", "<lora:..:1>", "<lora:x:inf>", "<lora:x:99>"])
def test_parse_lora_tags_rejects_bad_names_and_weights(tag: str) -> None:
    with pytest.raises(BadRequest):
        parse_lora_tags(f"cat {tag}")


@pytest.mark.parametrize("name", ["kohya", "peft"])
def test_lora_changes_output_and_removal_restores_weights_exactly(pipe, library, name) -> None:
    before_weights = _weights(pipe)
    before = _generate(pipe)
    fuser = LoraFuser(pipe)
    fuser.apply([LoraUse(name, 1.0, 1.0)], library)
    assert not np.array_equal(_generate(pipe), before)
    fuser.restore()
    after_weights = _weights(pipe)
    assert all(torch.equal(before_weights[k], after_weights[k]) for k in before_weights)
    np.testing.assert_array_equal(_generate(pipe), before)


def test_weight_zero_is_no_change(pipe, library) -> None:
    before = _weights(pipe)
    fuser = LoraFuser(pipe)
    fuser.apply([LoraUse("kohya", 0.0, 0.0)], library)
    assert all(torch.equal(before[k], v) for k, v in _weights(pipe).items())
    fuser.restore()


def test_two_loras_fuse_into_one_weight_update(pipe, library) -> None:
    fuser = LoraFuser(pipe)
    fuser.apply([LoraUse("kohya", 1.0, 1.0)], library)
    only_kohya = _weights(pipe)
    fuser.apply([LoraUse("kohya", 1.0, 1.0), LoraUse("peft", 1.0, 1.0)], library)
    both = _weights(pipe)
    changed = [k for k in both if not torch.equal(both[k], only_kohya[k])]
    assert changed and all(k.startswith("unet.") for k in changed)
    assert not any("lora" in name for name, _ in pipe.unet.named_modules())
    fuser.restore()


def test_kohya_scale_uses_alpha_over_rank(pipe) -> None:
    index = ModuleIndex(pipe)
    state = random_kohya_lora(pipe, rank=4, alpha=2.0)
    patches = parse_lora(state, index)
    assert {patch.scale for patch in patches} == {0.5}
    components = {patch.component for patch in patches}
    assert components == {"unet", "text_encoder"}


def test_sdxl_kohya_lora_with_original_unet_names_resolves() -> None:
    xl = build_pipeline(arch="sdxl")
    index = ModuleIndex(xl)
    module = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    weight = dict(xl.unet.named_modules())[module].weight
    state = {
        "lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.ones(2, weight.shape[1]),
        "lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q.lora_up.weight": torch.ones(weight.shape[0], 2),
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.ones(2, 64),
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.ones(64, 2),
    }
    targets = {(p.component, p.module) for p in parse_lora(state, index)}
    assert ("unet", module) in targets
    assert ("text_encoder_2", "text_model.encoder.layers.0.self_attn.q_proj") in targets


def test_foreign_lora_is_rejected_with_a_clear_message(pipe) -> None:
    index = ModuleIndex(pipe)
    with pytest.raises(LoraFormatError, match="does not have"):
        parse_lora({"lora_unet_nowhere.lora_down.weight": torch.ones(1, 1),
                    "lora_unet_nowhere.lora_up.weight": torch.ones(1, 1)}, index)
    with pytest.raises(LoraFormatError, match="cannot apply"):
        parse_lora({"hada_w1_a": torch.ones(1)}, index)


def test_lora_from_the_s3_library_is_fetched_and_cached(pipe, tmp_path: Path) -> None:
    source = tmp_path / "upload.safetensors"
    save_file(random_kohya_lora(pipe, seed=3), str(source))
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="easel-data")
        s3.upload_file(str(source), "easel-data", "loras/fresh.safetensors")
        library = LoraLibrary(
            tmp_path / "Lora", s3_uri="s3://easel-data/loras", cache_dir=tmp_path / "cache"
        )
        listed = {entry.name: entry.path for entry in library.listing()}
        assert listed["fresh"] == "loras/fresh.safetensors"  # its key: no bucket, no server path
        assert library.path_of("fresh") == tmp_path / "cache" / "fresh.safetensors"
        with pytest.raises(NotFound):
            library.path_of("absent")
    assert (tmp_path / "cache" / "fresh.safetensors").read_bytes() == source.read_bytes()
    # cached: found again without S3
    offline = LoraLibrary(tmp_path / "Lora", s3_uri="s3://easel-data/loras/",
                          cache_dir=tmp_path / "cache")
    assert offline.path_of("fresh").is_file()


def test_server_applies_loras_from_the_prompt_and_removes_them(client) -> None:
    plain = invoke(client, "txt2img", small()).json()["images"][0]
    styled = invoke(client, "txt2img", small(prompt="a lighthouse at dusk <lora:style-kohya:1>"))
    assert styled.status_code == 200, styled.text
    assert styled.json()["images"][0] != plain
    assert json.loads(styled.json()["info"])["loras"] == [
        {"name": "style-kohya", "te": 1.0, "unet": 1.0}
    ]
    both = invoke(
        client, "txt2img",
        small(prompt="a lighthouse at dusk <lora:style-kohya:0.7> <lora:detail-diffusers:0.5>"),
    )
    assert both.status_code == 200
    zero = invoke(client, "txt2img", small(prompt="a lighthouse at dusk <lora:style-kohya:0>"))
    # same pixels (the PNGs differ only in their `parameters` text: the prompt keeps its tag)
    assert np.array_equal(_pixels(zero.json()["images"][0]), _pixels(plain))
    assert invoke(client, "txt2img", small()).json()["images"][0] == plain


def test_server_uses_a_lora_published_to_s3_after_start(tiny_model_dir, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient
    from inference_support import wait_ready

    from easel_inference.app import create_app
    from easel_inference.loader import load_pipeline
    from easel_inference.settings import Settings

    upload = tmp_path / "fresh.safetensors"
    base = load_pipeline(tiny_model_dir / "Stable-diffusion" / "tiny.safetensors")
    save_file(random_kohya_lora(base, seed=9), str(upload))
    settings = Settings(
        model_dir=tiny_model_dir, default_model="tiny", warmup=False,
        lora_s3_uri="s3://easel-data/loras/", lora_cache_dir=tmp_path / "cache",
    )
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="easel-data")
        with TestClient(create_app(settings)) as client:
            wait_ready(client)
            plain = invoke(client, "txt2img", small()).json()["images"][0]
            missing = invoke(client, "txt2img", small(prompt="a boat <lora:fresh:1>"))
            assert missing.status_code == 404
            s3.upload_file(str(upload), "easel-data", "loras/fresh.safetensors")
            fresh = invoke(client, "txt2img", small(prompt="a lighthouse at dusk <lora:fresh:1>"))
            assert fresh.status_code == 200, fresh.text
            assert fresh.json()["images"][0] != plain
    assert (tmp_path / "cache" / "fresh.safetensors").is_file()


@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_fused_lora_matches_stock_diffusers_peft_output(tmp_path: Path, fmt: str) -> None:
    """The builder's LoRA files are real formats (stock diffusers loads them) and Easel's fused
    result equals stock diffusers' unfused PEFT result at the same weight."""
    from easel_inference.lora_builder import save_random_loras

    name = {"kohya": "style-kohya", "diffusers": "detail-diffusers"}[fmt]
    path = save_random_loras(build_pipeline(arch="sd15", seed=21), tmp_path)[name]
    ours = build_pipeline(arch="sd15", seed=21)
    fuser = LoraFuser(ours)
    fuser.apply([LoraUse(name, 0.7, 0.7)], LoraLibrary(tmp_path))
    stock = build_pipeline(arch="sd15", seed=21)
    stock.load_lora_weights(str(tmp_path), weight_name=path.name, adapter_name=name)
    stock.set_adapters([name], adapter_weights=[0.7])
    base = _generate(build_pipeline(arch="sd15", seed=21))
    expected, actual = _generate(stock), _generate(ours)
    assert not np.allclose(expected, base, atol=1e-3)  # the LoRA does something
    np.testing.assert_allclose(actual, expected, atol=2e-4)
