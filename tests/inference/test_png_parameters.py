"""Every PNG the server returns carries A1111's `parameters` text chunk: the image's own seed,
the prompt with its LoRA tags, the negative prompt, steps, sampler, CFG, size and model hash."""

from __future__ import annotations

import base64
import io
import json

from inference_support import invoke, small
from PIL import Image

from easel_contracts.infotext import PNG_TEXT_KEY, parse_infotext


def _chunk(b64: str) -> str:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    return image.info[PNG_TEXT_KEY]


def test_each_txt2img_png_carries_its_own_infotext(client) -> None:
    body = invoke(client, "txt2img", small(
        prompt="a lighthouse <lora:style-kohya:0.5>", negative_prompt="fog, rain",
        batch_size=2, cfg_scale=6.5, sampler_name="Euler a")).json()
    info = json.loads(body["info"])
    texts = [_chunk(image) for image in body["images"]]
    assert texts == info["infotexts"]
    first, second = (parse_infotext(text) for text in texts)
    assert first["Prompt"] == "a lighthouse <lora:style-kohya:0.5>"
    assert first["Negative prompt"] == "fog, rain"
    assert (first["Steps"], first["Sampler"], first["CFG scale"]) == ("2", "Euler a", "6.5")
    assert (first["Seed"], second["Seed"]) == ("7", "8")
    assert first["Size"] == "64x64"
    assert first["Model"] == "tiny" and first["Model hash"] == info["sd_model_hash"]


def test_img2img_pngs_carry_the_denoising_strength(client) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, format="PNG")
    init = base64.b64encode(buffer.getvalue()).decode()
    body = invoke(client, "img2img", small(init_images=[init], denoising_strength=0.6)).json()
    parsed = parse_infotext(_chunk(body["images"][0]))
    assert parsed["Denoising strength"] == "0.6"
