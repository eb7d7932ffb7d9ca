"""Family detection from tensor names and shapes (single files) and from model_index.json
(diffusers folders); unknown and mixed inputs are refused with what was found."""

from __future__ import annotations

import json

import pytest

from easel_contracts.families import (
    FAMILIES,
    FamilyError,
    ModelFamily,
    detect_checkpoint,
    detect_diffusers_folder,
    facts_for,
    missing_parts,
)

UNET = "model.diffusion_model."
SD1_TEXT = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
SD2_TEXT = "cond_stage_model.model.token_embedding.weight"
XL_TEXT = {"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (32,),
           "conditioner.embedders.1.model.ln_final.weight": (64,)}


def _ldm(text: dict, *, adm: bool = False, in_channels: int = 4) -> dict:
    shapes = {UNET + "input_blocks.0.0.weight": (32, in_channels, 3, 3),
              UNET + "out.2.weight": (4, 32, 3, 3),
              "first_stage_model.decoder.conv_in.weight": (64, 4, 3, 3)}
    if adm:
        shapes[UNET + "label_emb.0.0.weight"] = (128, 80)
    shapes.update(text)
    return shapes


def _mmdit(*, dual: bool, width: int = 64, prefix: str = UNET) -> dict:
    shapes = {prefix + "joint_blocks.0.x_block.attn.qkv.weight": (3 * width, width),
              prefix + "context_embedder.weight": (width, 32),
              prefix + "pos_embed": (1, 1024, width)}
    if dual:
        shapes[prefix + "joint_blocks.0.x_block.attn2.qkv.weight"] = (3 * width, width)
    return shapes


def _flux(*, guidance: bool, img_in: int = 64, prefix: str = "") -> dict:
    shapes = {prefix + "double_blocks.0.img_attn.norm.key_norm.scale": (16,),
              prefix + "single_blocks.0.linear1.weight": (96, 32),
              prefix + "img_in.weight": (32, img_in)}
    if guidance:
        shapes[prefix + "guidance_in.in_layer.bias"] = (32,)
    return shapes


@pytest.mark.parametrize(("shapes", "family"), [
    (_ldm({SD1_TEXT: (49408, 32)}), ModelFamily.SD1),
    (_ldm({SD2_TEXT: (49408, 64)}), ModelFamily.SD2),
    (_ldm(XL_TEXT, adm=True), ModelFamily.SDXL),
    (_ldm({"conditioner.embedders.0.model.ln_final.weight": (64,)}, adm=True),
     ModelFamily.SDXL_REFINER),
    (_mmdit(dual=True), ModelFamily.SD35_MEDIUM),
    (_mmdit(dual=False), ModelFamily.SD35_LARGE),
    (_mmdit(dual=False, prefix=""), ModelFamily.SD35_LARGE),
    (_flux(guidance=True), ModelFamily.FLUX_DEV),
    (_flux(guidance=False, prefix=UNET), ModelFamily.FLUX_SCHNELL),
])
def test_each_family_is_told_from_its_tensor_names(shapes, family):
    assert detect_checkpoint(shapes).family is family


@pytest.mark.parametrize(("width", "family"), [(768, ModelFamily.SD1), (1024, ModelFamily.SD2)])
def test_unet_only_file_is_told_from_its_cross_attention_width(width, family):
    shapes = {UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, width)}
    assert detect_checkpoint(shapes).family is family


def test_unet_only_file_of_unknown_width_is_refused_naming_the_width():
    shapes = {UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 77)}
    with pytest.raises(FamilyError, match="cross-attention width \\(77\\)"):
        detect_checkpoint(shapes)


def test_sd2_v_prediction_is_read_from_a_v_pred_marker():
    plain = detect_checkpoint(_ldm({SD2_TEXT: (49408, 64)}))
    marked = detect_checkpoint(_ldm({SD2_TEXT: (49408, 64), "v_pred": ()}))
    assert (plain.prediction, marked.prediction) == (None, "v_prediction")
    assert facts_for("sd2").prediction == "v_prediction"


def test_inpainting_unet_is_flagged():
    assert detect_checkpoint(_ldm({SD1_TEXT: (49408, 32)}, in_channels=9)).inpainting


def test_components_say_which_parts_the_file_holds():
    flux = detect_checkpoint(_flux(guidance=True))
    bundled = detect_checkpoint({**_flux(guidance=True),
                                 "text_encoders.t5xxl.transformer.shared.weight": (32128, 64),
                                 "vae.decoder.conv_in.weight": (8, 16, 3, 3)})
    assert flux.components == ("denoiser",)
    assert set(bundled.components) == {"denoiser", "vae", "t5xxl"}


def test_file_without_a_known_denoiser_is_refused_with_what_it_holds():
    shapes = {"encoder.layers.0.weight": (4, 4), "encoder.layers.1.weight": (4, 4)}
    with pytest.raises(FamilyError, match=r"no denoiser.*encoder\.layers\.\* \(2\)"):
        detect_checkpoint(shapes, name="odd.safetensors")


def test_file_with_two_denoisers_is_refused_as_mixed():
    with pytest.raises(FamilyError, match="mixes model families.*SD UNet.*FLUX.1"):
        detect_checkpoint({**_ldm({SD1_TEXT: (49408, 32)}), **_flux(guidance=False)})


def test_unet_with_two_families_text_encoders_is_refused_as_mixed():
    with pytest.raises(FamilyError, match="mixes model families.*SD1.x.*SD2.x"):
        detect_checkpoint(_ldm({SD1_TEXT: (49408, 32), SD2_TEXT: (49408, 64)}))


def test_sd1_text_encoder_with_an_sdxl_unet_is_refused_as_mixed():
    with pytest.raises(FamilyError, match="mixes model families.*label_emb"):
        detect_checkpoint(_ldm({SD1_TEXT: (49408, 32)}, adm=True))


def test_flux_with_an_sdxl_text_encoder_is_refused_as_mixed():
    shapes = {**_flux(guidance=True), "conditioner.embedders.1.model.ln_final.weight": (64,)}
    with pytest.raises(FamilyError, match="mixes model families.*FLUX.1.*SDXL"):
        detect_checkpoint(shapes)


def test_flux_fill_is_refused_by_name():
    with pytest.raises(FamilyError, match="FLUX.1 Fill"):
        detect_checkpoint(_flux(guidance=True, img_in=384))


def test_flux2_is_refused_as_unsupported():
    shapes = {"double_blocks.0.img_attn.norm.key_norm.scale": (16,),
              "single_stream_modulation.lin.weight": (32, 32)}
    with pytest.raises(FamilyError, match="FLUX.2 is not supported"):
        detect_checkpoint(shapes)


def test_sd3_medium_3_0_is_refused():
    with pytest.raises(FamilyError, match=r"SD3 \(3.0\) medium"):
        detect_checkpoint(_mmdit(dual=False, width=1536))


def _folder(tmp_path, class_name, **configs):
    folder = tmp_path / "model"
    index = {"_class_name": class_name}
    for component, config in configs.items():
        if component == "index":
            index.update(config)
            continue
        (folder / component).mkdir(parents=True, exist_ok=True)
        name = "scheduler_config.json" if component == "scheduler" else "config.json"
        (folder / component / name).write_text(json.dumps(config))
    folder.mkdir(exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


@pytest.mark.parametrize(("class_name", "configs", "family"), [
    ("StableDiffusionPipeline", {"unet": {"use_linear_projection": False}}, ModelFamily.SD1),
    ("StableDiffusionPipeline", {"unet": {"use_linear_projection": True}}, ModelFamily.SD2),
    ("StableDiffusionXLPipeline",
     {"unet": {}, "index": {"text_encoder": ["transformers", "CLIPTextModel"]}}, ModelFamily.SDXL),
    ("StableDiffusionXLImg2ImgPipeline",
     {"unet": {}, "index": {"text_encoder": [None, None],
                            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}},
     ModelFamily.SDXL_REFINER),
    ("StableDiffusion3Pipeline", {"transformer": {"dual_attention_layers": [0]}},
     ModelFamily.SD35_MEDIUM),
    ("StableDiffusion3Pipeline",
     {"transformer": {"num_attention_heads": 2, "attention_head_dim": 16}},
     ModelFamily.SD35_LARGE),
    ("FluxPipeline", {"transformer": {"guidance_embeds": True}}, ModelFamily.FLUX_DEV),
    ("FluxPipeline", {"transformer": {"guidance_embeds": False}}, ModelFamily.FLUX_SCHNELL),
])
def test_each_family_is_told_from_a_diffusers_folder(tmp_path, class_name, configs, family):
    assert detect_diffusers_folder(_folder(tmp_path, class_name, **configs)).family is family


def test_folder_prediction_type_comes_from_its_scheduler(tmp_path):
    folder = _folder(tmp_path, "StableDiffusionPipeline", unet={"use_linear_projection": True},
                     scheduler={"prediction_type": "v_prediction"})
    assert detect_diffusers_folder(folder).prediction == "v_prediction"


def test_refiner_folder_lists_only_its_second_encoder(tmp_path):
    folder = _folder(tmp_path, "StableDiffusionXLImg2ImgPipeline", unet={},
                     index={"text_encoder": [None, None], "unet": ["diffusers", "U"],
                            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]})
    assert detect_diffusers_folder(folder).components == ("denoiser", "openclip_g")


def test_folder_of_an_unsupported_pipeline_is_refused_naming_it(tmp_path):
    with pytest.raises(FamilyError, match="'QwenImagePipeline', which is not a supported family"):
        detect_diffusers_folder(_folder(tmp_path, "QwenImagePipeline"))


def test_folder_missing_its_denoiser_config_is_refused_naming_the_file(tmp_path):
    with pytest.raises(FamilyError, match="transformer/config.json is missing"):
        detect_diffusers_folder(_folder(tmp_path, "FluxPipeline"))


def test_every_family_has_facts_and_only_flow_families_need_t5():
    assert set(FAMILIES) == set(ModelFamily)
    assert {f for f, facts in FAMILIES.items() if facts.needs_t5} == {
        ModelFamily.SD35_MEDIUM, ModelFamily.SD35_LARGE, ModelFamily.FLUX_DEV,
        ModelFamily.FLUX_SCHNELL}
    assert all(facts.prediction == "flow" for facts in FAMILIES.values() if facts.needs_t5)


def test_unknown_family_name_is_refused_listing_the_known_ones():
    with pytest.raises(FamilyError, match="known: sd1, sd2"):
        facts_for("sd4")


def test_unet_only_sdxl_file_is_told_from_its_cross_attention_width():
    shapes = {UNET + "middle_block.1.transformer_blocks.0.attn2.to_k.weight": (1280, 2048)}
    assert detect_checkpoint(shapes).family is ModelFamily.SDXL


def test_flux_file_alone_misses_its_text_encoders_vae_and_t5_tokenizer():
    detection = detect_checkpoint(_flux(guidance=False))
    assert missing_parts(detection, []) == [
        "text_encoder/clip_l.safetensors", "text_encoder/t5xxl.safetensors",
        "VAE/ae.safetensors", "text_encoder/spiece.model"]


def test_parts_bundled_in_the_file_or_present_beside_it_are_not_missing():
    detection = detect_checkpoint({**_mmdit(dual=True),
                                   "text_encoders.clip_l.transformer.x.weight": (4,),
                                   "text_encoders.clip_g.transformer.x.weight": (4,)})
    assert missing_parts(detection, ["text_encoder/spiece.model"]) == [
        "text_encoder/t5xxl.safetensors"]


def test_sd_families_need_nothing_beside_their_file():
    detection = detect_checkpoint({UNET + "out.2.weight": (4, 4, 3, 3),
                                   UNET + "middle_block.1.attn2.to_k.weight": (320, 768)})
    assert missing_parts(detection, []) == []
