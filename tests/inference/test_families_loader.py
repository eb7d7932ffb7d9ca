"""Family detection as the server sees it: it agrees with diffusers' own detector on the real
families' marker keys (at real sizes), it refuses what diffusers would silently misread, and the
loader refuses a flow-family file without its separate parts, naming them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from diffusers.loaders.single_file_utils import infer_diffusers_model_type
from safetensors import safe_open
from safetensors.torch import save_file

from easel_contracts.families import FamilyError, ModelFamily, detect_checkpoint
from easel_inference.builder import build_pipeline, save_single_file
from easel_inference.loader import ModelLoadError, load_pipeline

UNET = "model.diffusion_model."


@dataclass(frozen=True)
class _Shape:
    """What diffusers' detector reads of a tensor: its shape."""

    shape: tuple[int, ...]


def _ldm_real(text: dict, *, adm: bool = False) -> dict:
    shapes = {UNET + "input_blocks.0.0.weight": (320, 4, 3, 3),
              UNET + "output_blocks.11.0.skip_connection.weight": (320, 640, 1, 1)}
    shapes.update(text)
    if adm:
        shapes[UNET + "label_emb.0.0.weight"] = (1280, 2816)
    return shapes


# real-size marker keys of each family (names and widths from the released checkpoints)
REAL_MARKERS = {
    "v1": (ModelFamily.SD1, _ldm_real({
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": (77, 768),
        UNET + "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (320, 768)})),
    "v2": (ModelFamily.SD2, _ldm_real({
        "cond_stage_model.model.token_embedding.weight": (49408, 1024),
        UNET + "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024)})),
    "xl_base": (ModelFamily.SDXL, _ldm_real({
        "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (768,),
        "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": (1280,)},
        adm=True)),
    "xl_refiner": (ModelFamily.SDXL_REFINER, _ldm_real({
        "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias": (1280,)},
        adm=True)),
    "sd35_medium": (ModelFamily.SD35_MEDIUM, {
        UNET + "joint_blocks.0.context_block.adaLN_modulation.1.bias": (9216,),
        UNET + "joint_blocks.0.x_block.attn2.qkv.weight": (4608, 1536),
        UNET + "context_embedder.weight": (1536, 4096),
        UNET + "pos_embed": (1, 147456, 1536)}),
    "sd35_large": (ModelFamily.SD35_LARGE, {
        UNET + "joint_blocks.0.context_block.adaLN_modulation.1.bias": (14592,),
        UNET + "joint_blocks.37.x_block.mlp.fc1.weight": (9728, 2432),
        UNET + "context_embedder.weight": (2432, 4096),
        UNET + "pos_embed": (1, 36864, 2432)}),
    "flux-dev": (ModelFamily.FLUX_DEV, {
        "double_blocks.0.img_attn.norm.key_norm.scale": (128,),
        "guidance_in.in_layer.bias": (3072,),
        "img_in.weight": (3072, 64)}),
    "flux-schnell": (ModelFamily.FLUX_SCHNELL, {
        "double_blocks.0.img_attn.norm.key_norm.scale": (128,),
        "img_in.weight": (3072, 64)}),
}


@pytest.mark.parametrize("diffusers_type", sorted(REAL_MARKERS))
def test_detection_agrees_with_diffusers_on_real_size_markers(diffusers_type):
    family, shapes = REAL_MARKERS[diffusers_type]
    as_tensors = {key: _Shape(shape) for key, shape in shapes.items()}
    assert infer_diffusers_model_type(as_tensors) == diffusers_type
    assert detect_checkpoint(shapes).family is family


def test_unknown_file_that_diffusers_reads_as_sd1_is_refused():
    shapes = {"encoder.block.0.weight": (8, 8)}
    assert infer_diffusers_model_type({k: _Shape(v) for k, v in shapes.items()}) == "v1"
    with pytest.raises(FamilyError, match="no denoiser"):
        detect_checkpoint(shapes)


def _write(path: Path, shapes: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: torch.zeros(shape) for key, shape in shapes.items()}, str(path))
    return path


def test_loader_refuses_a_flux_file_without_its_parts_naming_them(tmp_path):
    _, shapes = REAL_MARKERS["flux-dev"]
    small = {key: tuple(min(d, 8) for d in shape) for key, shape in shapes.items()}
    path = _write(tmp_path / "Stable-diffusion" / "f.safetensors", small)
    with pytest.raises(ModelLoadError, match="f.safetensors is a FLUX.1 dev checkpoint without "
                                             "text_encoder/clip_l.safetensors, text_encoder/"
                                             "t5xxl.safetensors, VAE/ae.safetensors"):
        load_pipeline(path)


def test_loader_refuses_a_mixed_file_saying_what_it_holds(tmp_path):
    path = _write(tmp_path / "m.safetensors", {
        UNET + "input_blocks.0.0.weight": (4, 4, 3, 3),
        "double_blocks.0.img_attn.norm.key_norm.scale": (4,)})
    with pytest.raises(ModelLoadError, match="mixes model families.*SD UNet.*FLUX.1"):
        load_pipeline(path)


def test_loader_refuses_an_unsupported_diffusers_folder_naming_its_pipeline(tmp_path):
    folder = tmp_path / "qwen"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "QwenImagePipeline"}))
    with pytest.raises(ModelLoadError, match="QwenImagePipeline"):
        load_pipeline(folder)


@pytest.mark.parametrize(("arch", "family"), [
    ("sd15", ModelFamily.SD1), ("sd2", ModelFamily.SD2), ("sdxl", ModelFamily.SDXL)])
def test_builder_single_files_are_detected_from_their_keys(tmp_path, arch, family):
    written = save_single_file(build_pipeline(arch=arch, seed=2), tmp_path / "plain")
    with safe_open(str(written), framework="pt") as handle:
        shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    assert detect_checkpoint(shapes).family is family
