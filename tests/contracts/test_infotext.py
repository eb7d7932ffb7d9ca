"""The infotext (A1111's PNG `parameters` text): what the server writes, the portal reads back."""

from __future__ import annotations

from easel_contracts.infotext import format_infotext, parse_infotext

A1111_SAMPLE = (
    "a photo of a cat, <lora:fluffy:0.8>\n"
    "wearing a hat\n"
    "Negative prompt: blurry, low quality\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, "
    "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
    'Lora hashes: "fluffy: 0a1b2c3d4e5f", Version: v1.10.1'
)


def test_a1111_text_parses_into_a1111s_parameters_mapping():
    parsed = parse_infotext(A1111_SAMPLE)
    assert parsed["Prompt"] == "a photo of a cat, <lora:fluffy:0.8>\nwearing a hat"
    assert parsed["Negative prompt"] == "blurry, low quality"
    assert parsed["Steps"] == "20" and parsed["CFG scale"] == "7" and parsed["Seed"] == "1234"
    assert parsed["Sampler"] == "DPM++ 2M" and parsed["Schedule type"] == "Karras"
    assert (parsed["Size"], parsed["Size-1"], parsed["Size-2"]) == ("512x768", "512", "768")
    assert parsed["Model hash"] == "6ce0161689"
    assert parsed["Lora hashes"] == "fluffy: 0a1b2c3d4e5f"  # quoted value, unquoted


def test_written_text_reads_back_with_every_setting():
    text = format_infotext("a red fox, <lora:fox:0.6>", "ugly", {
        "Steps": 12, "Sampler": "Euler a", "Schedule type": None, "CFG scale": 7.0,
        "Seed": 42, "Size": "64x96", "Model hash": "abcdef12", "Model": "tiny",
        "Denoising strength": 0.35, "Note": "with, a comma: and colon"})
    assert "Schedule type" not in text  # None is left out
    assert "CFG scale: 7," in text  # floats as A1111 writes them
    parsed = parse_infotext(text)
    assert parsed["Prompt"] == "a red fox, <lora:fox:0.6>"
    assert parsed["Negative prompt"] == "ugly"
    assert parsed["Steps"] == "12" and parsed["Seed"] == "42" and parsed["Model"] == "tiny"
    assert parsed["Denoising strength"] == "0.35"
    assert parsed["Note"] == "with, a comma: and colon"


def test_without_a_negative_prompt_the_negative_is_empty():
    parsed = parse_infotext(format_infotext("cat", "", {"Steps": 1, "Seed": 2, "Size": "8x8"}))
    assert parsed["Prompt"] == "cat" and parsed["Negative prompt"] == ""


def test_text_without_settings_is_all_prompt():
    parsed = parse_infotext("just a prompt: with a colon")
    assert parsed == {"Prompt": "just a prompt: with a colon", "Negative prompt": ""}
