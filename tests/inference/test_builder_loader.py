"""Builder and loader: round trips through single files and diffusers folders, offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from easel_inference.builder import (
    build_pipeline,
    save_diffusers,
    save_single_file,
)
from easel_inference.loader import ModelLoadError, find_checkpoints, load_pipeline
from easel_inference.tokenizer import build_clip_tokenizer


def _generate(pipe) -> np.ndarray:
    return pipe(
        "a red fox in the snow",
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(3),
        output_type="np",
    ).images


def test_tokenizer_matches_clip_ids() -> None:
    tokenizer = build_clip_tokenizer()
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tokenizer) == 49408


def test_open_clip_tokenizer_pads_with_exclamation_mark() -> None:
    tokenizer = build_clip_tokenizer(pad_token="!")
    ids = tokenizer("cat", padding="max_length", max_length=77).input_ids
    assert ids[-1] == 0 and tokenizer.pad_token == "!"


@pytest.mark.parametrize("arch", ["sd15", "sd2", "sdxl"])
def test_single_file_round_trip_gives_identical_images(arch: str, tmp_path: Path) -> None:
    pipe = build_pipeline(arch=arch, seed=5)
    written = save_single_file(pipe, tmp_path / "model")
    assert written == tmp_path / "model.safetensors"
    assert (tmp_path / "model.yaml").is_file()
    loaded = load_pipeline(written)
    np.testing.assert_array_equal(_generate(pipe), _generate(loaded))


@pytest.mark.parametrize(
    ("arch", "prefixes"),
    [
        ("sd15", ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.")),
        ("sd2", ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.model.")),
        ("sdxl", ("model.diffusion_model.", "first_stage_model.", "conditioner.embedders.")),
    ],
)
def test_single_file_uses_original_key_layout(arch: str, prefixes, tmp_path: Path) -> None:
    written = save_single_file(build_pipeline(arch=arch), tmp_path / "m.safetensors")
    with safe_open(str(written), framework="pt") as handle:
        keys = list(handle.keys())
    assert all(key.startswith(prefixes) for key in keys)
    for prefix in prefixes:
        assert any(key.startswith(prefix) for key in keys)
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "model.diffusion_model.out.2.weight" in keys
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in keys


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_ckpt_loads_through_yaml_without_embedded_configs(arch: str, tmp_path: Path) -> None:
    pipe = build_pipeline(arch=arch, seed=2)
    written = save_single_file(pipe, tmp_path / "legacy.ckpt")
    assert written.suffix == ".ckpt"
    np.testing.assert_array_equal(_generate(pipe), _generate(load_pipeline(written)))


def test_yaml_beside_checkpoint_decides_prediction_type(tmp_path: Path) -> None:
    import yaml

    pipe = build_pipeline(arch="sd15")
    written = save_single_file(pipe, tmp_path / "legacy.ckpt")
    original = yaml.safe_load(written.with_suffix(".yaml").read_text())
    assert load_pipeline(written).scheduler.config.prediction_type == "epsilon"
    original["model"]["params"]["parameterization"] = "v"
    written.with_suffix(".yaml").write_text(yaml.safe_dump(original))
    assert load_pipeline(written).scheduler.config.prediction_type == "v_prediction"


def test_ckpt_with_pickled_code_is_refused(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": Payload()}}, bad)
    with pytest.raises(ModelLoadError, match="weights-only"):
        load_pipeline(bad)


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_diffusers_folder_round_trip(arch: str, tmp_path: Path) -> None:
    pipe = build_pipeline(arch=arch, seed=4)
    folder = save_diffusers(pipe, tmp_path / "folder")
    assert json.loads((folder / "model_index.json").read_text())["_class_name"].startswith(
        "StableDiffusion"
    )
    np.testing.assert_array_equal(_generate(pipe), _generate(load_pipeline(folder)))


def test_find_checkpoints_lists_files_and_folders(tiny_model_dir: Path) -> None:
    found = find_checkpoints(tiny_model_dir)
    assert found["tiny"] == tiny_model_dir / "Stable-diffusion" / "tiny.safetensors"
    assert found["tiny-diffusers"] == tiny_model_dir / "Stable-diffusion" / "tiny-diffusers"
    assert list(found) == sorted(found)


def test_model_dir_has_a1111_layout(tiny_model_dir: Path) -> None:
    for folder in ("Stable-diffusion", "Lora", "ControlNet", "VAE"):
        assert (tiny_model_dir / folder).is_dir()
    assert sorted(p.name for p in (tiny_model_dir / "Lora").iterdir()) == [
        "detail-diffusers.safetensors",
        "style-kohya.safetensors",
    ]
    assert (tiny_model_dir / "ControlNet" / "tiny-canny" / "config.json").is_file()
    assert (tiny_model_dir / "VAE" / "tiny-vae.safetensors").is_file()


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_pipeline(tmp_path / "nothing.safetensors")


def test_loading_never_opens_a_network_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    written = save_single_file(build_pipeline(arch="sdxl"), tmp_path / "xl.safetensors")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert load_pipeline(written).unet is not None


def test_single_file_controlnet_in_original_layout_loads_exactly(tmp_path: Path) -> None:
    from diffusers import ControlNetModel

    from easel_inference.builder import save_controlnet_file
    from easel_inference.loader import load_controlnet

    pipe = build_pipeline(arch="sd15")
    torch.manual_seed(0)
    controlnet = ControlNetModel.from_unet(pipe.unet)
    for parameter in controlnet.parameters():
        torch.nn.init.normal_(parameter, std=0.02)
    written = save_controlnet_file(controlnet, tmp_path / "control_canny.safetensors")
    with safe_open(str(written), framework="pt") as handle:
        keys = list(handle.keys())
    assert all(key.startswith("control_model.") for key in keys)
    assert "control_model.input_hint_block.14.weight" in keys
    assert "control_model.zero_convs.0.0.weight" in keys
    loaded = load_controlnet(written, unet_config=dict(pipe.unet.config))
    expected, actual = controlnet.state_dict(), loaded.state_dict()
    assert set(expected) == set(actual)
    assert all(torch.equal(expected[key], actual[key]) for key in expected)
