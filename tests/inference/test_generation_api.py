"""/invocations txt2img and img2img: A1111 shapes, determinism, samplers, models, ControlNet."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from inference_support import invoke, small
from PIL import Image

from easel_inference.samplers import advertised_sampler_names


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def _png(color: tuple[int, int, int] | None = None, *, pattern: bool = False) -> str:
    image = Image.new("RGB", (64, 64), color or (0, 0, 0))
    if pattern:
        array = np.zeros((64, 64, 3), dtype=np.uint8)
        array[16:48, 16:48] = 255
        image = Image.fromarray(array)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_txt2img_returns_a1111_shape(client) -> None:
    response = invoke(client, "txt2img", small(batch_size=2, n_iter=2))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"images", "parameters", "info"}
    assert len(body["images"]) == 4
    assert _pixels(body["images"][0]).shape == (64, 64, 3)
    info = json.loads(body["info"])
    assert info["all_seeds"] == [7, 8, 9, 10]
    assert info["seed"] == 7 and info["sd_model_name"] == "tiny"
    models = invoke(client, "sd-models").json()
    assert info["sd_model_hash"] == next(m["hash"] for m in models if m["model_name"] == "tiny")
    assert info["timings"]["generation_seconds"] >= 0
    assert body["parameters"]["prompt"] == "a lighthouse at dusk"


def test_same_seed_same_image_and_other_seed_differs(client) -> None:
    first = invoke(client, "txt2img", small()).json()["images"][0]
    again = invoke(client, "txt2img", small()).json()["images"][0]
    other = invoke(client, "txt2img", small(seed=8)).json()["images"][0]
    assert first == again
    assert first != other


def test_seed_minus_one_picks_a_real_seed_that_reproduces(client) -> None:
    body = invoke(client, "txt2img", small(seed=-1)).json()
    seed = json.loads(body["info"])["seed"]
    assert seed >= 0
    assert invoke(client, "txt2img", small(seed=seed)).json()["images"] == body["images"]


def test_img2img_accepts_data_prefix_and_is_deterministic(client) -> None:
    init = _png(pattern=True)
    plain = invoke(client, "img2img", small(init_images=[init], denoising_strength=0.6)).json()
    prefixed = invoke(
        client, "img2img", small(init_images=["data:image/png;base64," + init], denoising_strength=0.6)
    ).json()
    assert plain["images"] == prefixed["images"]
    assert json.loads(plain["info"])["denoising_strength"] == 0.6


def test_img2img_follows_the_init_image(client) -> None:
    black = invoke(client, "img2img", small(init_images=[_png((0, 0, 0))], denoising_strength=0.3))
    white = invoke(client, "img2img", small(init_images=[_png((255, 255, 255))], denoising_strength=0.3))
    assert _pixels(white.json()["images"][0]).mean() > _pixels(black.json()["images"][0]).mean()


def test_inpainting_mask_repaints_inside_and_keeps_the_pixels_outside(client) -> None:
    init = _png((255, 255, 255))
    mask = _png(pattern=True)  # white square 16..48
    body = invoke(
        client, "img2img",
        small(init_images=[init], mask=mask, denoising_strength=1.0, mask_blur=0),
    ).json()
    info = json.loads(body["info"])
    assert info["is_using_inpainting_conditioning"] is True
    pixels = _pixels(body["images"][0]).astype(float)
    outside = np.ones((64, 64), bool)
    outside[16:48, 16:48] = False
    assert (pixels[outside] == 255).all()
    assert np.abs(pixels[20:44, 20:44] - 255).mean() > 10


@pytest.mark.parametrize("sampler", advertised_sampler_names())
def test_every_advertised_sampler_generates(client, sampler: str) -> None:
    response = invoke(client, "txt2img", small(sampler_name=sampler))
    assert response.status_code == 200, response.text
    assert json.loads(response.json()["info"])["sampler_name"] == sampler


STOCHASTIC_SAMPLERS = ["Euler a", "DPM++ 2M SDE", "DPM++ SDE", "DPM++ SDE Karras"]


@pytest.mark.parametrize("sampler", STOCHASTIC_SAMPLERS)
def test_noisy_samplers_reproduce_per_image_seeds(client, sampler: str) -> None:
    """Samplers that add noise every step draw it from each image's own seed: the same seed
    gives the same image, and image 2 of a batch seeded 7 is the image seed 8 gives alone."""
    first = invoke(client, "txt2img", small(sampler_name=sampler, steps=3)).json()
    again = invoke(client, "txt2img", small(sampler_name=sampler, steps=3)).json()
    assert first["images"] == again["images"]
    batch = invoke(client, "txt2img", small(sampler_name=sampler, steps=3, batch_size=2)).json()
    alone = invoke(client, "txt2img", small(sampler_name=sampler, steps=3, seed=8)).json()
    assert json.loads(batch["info"])["all_seeds"] == [7, 8]
    assert batch["images"][0] != batch["images"][1]
    difference = np.abs(_pixels(batch["images"][1]).astype(int) - _pixels(alone["images"][0]))
    assert difference.max() <= 2  # batched vs single convolutions round differently


def test_dpmpp_sde_is_the_brownian_tree_sde_sampler() -> None:
    from diffusers import DPMSolverSDEScheduler

    from easel_inference.samplers import make_scheduler, resolve_sampler

    sampler, karras = resolve_sampler("DPM++ SDE Karras", None)
    scheduler = make_scheduler({"num_train_timesteps": 1000}, sampler, karras=karras)
    assert isinstance(scheduler, DPMSolverSDEScheduler)
    assert scheduler.config.use_karras_sigmas


def test_schedule_type_field_selects_karras(client) -> None:
    body = invoke(client, "txt2img", small(sampler_name="DPM++ 2M", scheduler="Karras")).json()
    assert json.loads(body["info"])["sampler_name"] == "DPM++ 2M Karras"


def test_unknown_sampler_is_400_listing_valid_names(client) -> None:
    response = invoke(client, "txt2img", small(sampler_name="Warp Drive"))
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "Warp Drive" in detail
    for name in ("Euler a", "DPM++ 2M Karras", "UniPC"):
        assert name in detail
    assert response.json()["field"] == "sampler_name"


def test_listing_tasks(client) -> None:
    models = invoke(client, "sd-models").json()
    names = {m["model_name"] for m in models}
    assert names == {"tiny", "tiny-diffusers"}
    tiny = next(m for m in models if m["model_name"] == "tiny")
    assert tiny["title"].startswith("tiny.safetensors [") and tiny["config"].endswith("tiny.yaml")
    loras = {entry["name"] for entry in invoke(client, "loras").json()}
    assert loras == {"style-kohya", "detail-diffusers"}
    samplers = [entry["name"] for entry in invoke(client, "samplers").json()]
    assert samplers == advertised_sampler_names()
    options = invoke(client, "options").json()
    assert options["sd_model_checkpoint"] in names


def test_controlnet_listing_names_what_a_unit_can_use(client) -> None:
    listed = invoke(client, "controlnet-models").json()
    assert listed == {"model_list": ["tiny-canny"]}
    unit = {"module": "canny", "model": listed["model_list"][0], "image": _png(pattern=True)}
    response = invoke(client, "txt2img", small(alwayson_scripts={"controlnet": {"args": [unit]}}))
    assert response.status_code == 200, response.text


def test_override_settings_switches_model(client) -> None:
    default = invoke(client, "txt2img", small()).json()
    other = invoke(
        client, "txt2img", small(override_settings={"sd_model_checkpoint": "tiny-diffusers"})
    ).json()
    assert json.loads(other["info"])["sd_model_name"] == "tiny-diffusers"
    assert other["images"] != default["images"]
    titled = invoke(
        client, "txt2img", small(override_settings={"sd_model_checkpoint": "tiny.safetensors [abc123]"})
    ).json()
    assert titled["images"] == default["images"]


def test_unknown_model_is_404_listing_available(client) -> None:
    response = invoke(client, "txt2img", small(override_settings={"sd_model_checkpoint": "nope"}))
    assert response.status_code == 404
    assert "tiny-diffusers" in response.json()["detail"]


def test_controlnet_canny_steers_the_image(client) -> None:
    control = _png(pattern=True)
    plain = invoke(client, "txt2img", small()).json()["images"][0]
    unit = {"module": "canny", "model": "tiny-canny", "image": control, "weight": 1.0}
    steered = invoke(client, "txt2img", small(alwayson_scripts={"controlnet": {"args": [unit]}}))
    assert steered.status_code == 200, steered.text
    assert steered.json()["images"][0] != plain
    disabled = dict(unit, enabled=False)
    off = invoke(client, "txt2img", small(alwayson_scripts={"controlnet": {"args": [disabled]}}))
    assert off.json()["images"][0] == plain


def test_controlnet_unknown_module_is_400(client) -> None:
    unit = {"module": "depth_midas", "model": "tiny-canny", "image": _png()}
    response = invoke(client, "txt2img", small(alwayson_scripts={"controlnet": {"args": [unit]}}))
    assert response.status_code == 400
    assert "canny" in response.json()["detail"]


def test_long_and_weighted_prompts_change_the_image(client) -> None:
    base = "a lighthouse at dusk"
    plain = invoke(client, "txt2img", small(prompt=base)).json()["images"][0]
    weighted = invoke(client, "txt2img", small(prompt="a (lighthouse:1.6) at dusk")).json()
    assert weighted["images"][0] != plain
    long_tail = ", ".join(["stormy sea"] * 40)
    short = invoke(client, "txt2img", small(prompt=base + ", " + ", ".join(["stormy sea"] * 20)))
    long = invoke(client, "txt2img", small(prompt=base + ", " + long_tail))
    assert long.status_code == 200
    assert long.json()["images"][0] != short.json()["images"][0]


def test_vae_from_the_vae_folder_is_used_on_request(client) -> None:
    listing = invoke(client, "sd-vae").json()
    assert [entry["model_name"] for entry in listing] == ["tiny-vae.safetensors"]
    plain = invoke(client, "txt2img", small()).json()["images"][0]
    other = invoke(
        client, "txt2img", small(override_settings={"sd_vae": "tiny-vae.safetensors"})
    ).json()
    assert other["images"][0] != plain
    assert json.loads(other["info"])["sd_vae_name"] == "tiny-vae.safetensors"
    automatic = invoke(client, "txt2img", small(override_settings={"sd_vae": "Automatic"}))
    assert automatic.json()["images"][0] == plain


def test_unknown_vae_is_404(client) -> None:
    response = invoke(client, "txt2img", small(override_settings={"sd_vae": "nope.safetensors"}))
    assert response.status_code == 404
    assert "tiny-vae.safetensors" in response.json()["detail"]
