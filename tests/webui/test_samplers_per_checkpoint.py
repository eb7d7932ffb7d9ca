"""The samplers listing per checkpoint at the portal: on an endpoint with a UNet model beside a
FLUX.1 one, the X/Y plot's check and the Generate form ask for the samplers of the model the
request uses (moto + the fake endpoint, which answers the listing as such a server does)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from easel_contracts import invocations as inv

FLUX_SAMPLERS = ["Euler"]
ALL_SAMPLERS = ["Euler a", "Euler", "DPM++ 2M Karras"]


def mixed_endpoint(world: Any, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """``easel-demo`` in service with ``tiny.safetensors`` (SD1.x) and ``flux.safetensors``
    (FLUX.1): its ``samplers`` listing is FLUX.1's flow samplers for ``flux.safetensors``, every
    sampler otherwise. The payloads the listing was asked with, in order."""
    world.in_service()
    answer = world.runtime.invoke_endpoint
    asked: list[dict[str, Any]] = []

    def invoke(**kwargs: Any) -> dict[str, Any]:
        body = json.loads(kwargs["Body"])
        request = inv.Invocation.model_validate(body).request()
        listing: inv.SdModels | inv.Samplers
        if body["task"] == "sd-models":
            listing = inv.SdModels([
                inv.SdModel(title=f"{name}.safetensors", model_name=name,
                            filename=f"Stable-diffusion/{name}.safetensors")
                for name in ("tiny", "flux")])
        elif body["task"] == "samplers":
            asked.append(body["payload"])
            assert isinstance(request, inv.ListingRequest)
            names = FLUX_SAMPLERS if request.checkpoint == "flux.safetensors" else ALL_SAMPLERS
            listing = inv.Samplers([inv.Sampler(name=name, aliases=[], options={})
                                    for name in names])
        else:
            return answer(**kwargs)
        return {"Body": io.BytesIO(listing.model_dump_json().encode()),
                "ContentType": "application/json"}

    monkeypatch.setattr(world.runtime, "invoke_endpoint", invoke)
    return asked


@pytest.fixture
def mixed(world, monkeypatch) -> list[dict[str, Any]]:
    return mixed_endpoint(world, monkeypatch)


def _plot(client, **payload):
    return client.post("/generate", json={
        "endpoint": "easel-demo", "task": "txt2img",
        "payload": {"prompt": "a fox", "width": 64, "height": 64, "seed": 1, **payload,
                    "xy_plot": {"x": {"type": "sampler", "values": "Euler, DPM++ 2M Karras"},
                                "y": {"type": "seed", "values": "1"}}}})


def test_a_plot_for_the_flux_model_refuses_a_unet_sampler_before_any_invocation(world, mixed):
    response = _plot(world.signed_in("admin"),
                     override_settings={"sd_model_checkpoint": "flux.safetensors [0a1b2c3d]"})
    assert response.status_code == 400
    assert response.json()["detail"] == (
        "xy_plot.x: Sampler 'DPM++ 2M Karras' is not served by this endpoint for model "
        "'flux.safetensors'; it serves: Euler")
    assert mixed == [{"checkpoint": "flux.safetensors"}]
    assert world.runtime.generations() == []


def test_a_plot_naming_no_model_is_checked_against_the_endpoint_wide_listing(world, mixed):
    response = _plot(world.signed_in("admin"))
    assert response.status_code == 202, response.text
    assert mixed == [{}]  # the empty payload servers from before the field take


def test_the_generate_forms_samplers_follow_the_chosen_model(world, mixed):
    admin = world.signed_in("admin")
    flux = admin.get("/generate/samplers",
                     params={"endpoint": "easel-demo", "checkpoint": "flux.safetensors [0a1b]"})
    assert flux.status_code == 200, flux.text
    assert [sampler["name"] for sampler in flux.json()] == FLUX_SAMPLERS
    default = admin.get("/generate/samplers", params={"endpoint": "easel-demo"})
    assert [sampler["name"] for sampler in default.json()] == ALL_SAMPLERS
    assert mixed == [{"checkpoint": "flux.safetensors"}, {}]


def test_the_generate_forms_samplers_refuse_a_model_that_is_a_path(world, mixed):
    response = world.signed_in("admin").get(  # as app.js asks: for JSON
        "/generate/samplers", params={"endpoint": "easel-demo", "checkpoint": "../secret"},
        headers={"Accept": "application/json"})
    assert response.status_code == 422
    assert "checkpoint" in response.json()["detail"]
    assert "plain name" in response.json()["detail"]
    assert mixed == []
