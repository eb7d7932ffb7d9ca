"""The deploy form offers only the instance types a model fits (its manifest's family and the
memory plan) and the portal refuses a deploy on one it does not fit, before any SageMaker call."""

from __future__ import annotations

import html
import json
import re

from easel_contracts.model_manifest import ManifestCheckpoint, ManifestFile, ModelManifest

from .conftest import BUCKET


def _manifest(name: str, family: str, size: int) -> bytes:
    return ModelManifest(
        name=name, layout="archive", written_by="upload_model",
        checkpoints=(ManifestCheckpoint(name=name, path=f"Stable-diffusion/{name}.safetensors",
                                        family=family),),
        files=(ManifestFile(path=f"Stable-diffusion/{name}.safetensors", bytes=size),),
    ).to_json().encode()


def _put_model(world, name: str, family: str, size: int = 10**9) -> str:
    world.put(f"models/{name}/model.tar.gz", b"x" * 64)
    world.put(f"models/{name}/easel-model.json", _manifest(name, family, size))
    return f"s3://{BUCKET}/models/{name}/model.tar.gz"


def _deploy(client, model: str, instance_type: str, **extra: str):
    return client.post("/endpoints", data={
        "name": "demo", "model": model, "instance_type": instance_type, "mode": "realtime",
        "min_instances": "1", "max_instances": "1", "idle_ttl_hours": "1", **extra})


def _environment(world) -> dict[str, str]:
    (created,) = world.sagemaker.named("create_model")
    return created["PrimaryContainer"]["Environment"]


def test_deploy_form_offers_a_model_only_the_types_it_fits(world):
    _put_model(world, "flux", "flux_dev", 34 * 10**9)
    _put_model(world, "xl", "sdxl", 7 * 10**9)
    page = world.signed_in("admin").get("/endpoints").text
    fits = {match[0].rsplit("/", 2)[-2]: match[1].split() for match in re.findall(
        r'<option value="([^"]+)"[^>]*data-fits="([^"]*)"', page)}
    assert fits["flux"] == []  # 24 GB GPUs and a T4 in this allowlist
    assert set(fits["xl"]) == {"ml.g5.xlarge", "ml.g4dn.xlarge", "ml.g6.xlarge"}
    assert "FLUX.1 dev" in html.unescape(page)


def test_deploy_on_a_type_the_model_does_not_fit_is_refused_with_the_figures(world):
    model = _put_model(world, "flux", "flux_dev", 34 * 10**9)
    response = _deploy(world.signed_in("admin"), model, "ml.g5.xlarge")
    text = html.unescape(response.text)
    assert response.status_code == 400
    assert "FLUX.1 dev does not fit ml.g5.xlarge" in text and "GiB of GPU memory" in text
    assert world.sagemaker.named("create_model") == []


def test_flow_model_on_a_t4_is_refused_for_bf16(world):
    model = _put_model(world, "sd35", "sd35_medium", 16 * 10**9)
    response = _deploy(world.signed_in("admin"), model, "ml.g4dn.xlarge")
    assert "no fast bfloat16" in html.unescape(response.text)
    assert world.sagemaker.named("create_model") == []


def test_offload_plan_reaches_the_server_environment(world_factory):
    world = world_factory(EASEL_ENDPOINT_INSTANCE_TYPES=json.dumps({
        "ml.p4d.24xlarge": {"gpu_memory_gb": 320, "gpus": 8, "instance_storage": True,
                            "hourly_usd": 37.688}}))
    model = _put_model(world, "flux", "flux_schnell", 34 * 10**9)
    response = _deploy(world.signed_in("admin"), model, "ml.p4d.24xlarge")
    assert response.status_code == 303, response.text
    (created,) = world.sagemaker.named("create_model")
    assert created["PrimaryContainer"]["Environment"]["EASEL_TEXT_ENCODER_OFFLOAD"] == "1"


def test_model_that_fits_deploys_without_offload(world):
    model = _put_model(world, "xl", "sdxl", 7 * 10**9)
    assert _deploy(world.signed_in("admin"), model, "ml.g5.xlarge").status_code == 303
    (created,) = world.sagemaker.named("create_model")
    assert "EASEL_TEXT_ENCODER_OFFLOAD" not in created["PrimaryContainer"]["Environment"]


# --- FP8 weights: the deploy form's checkbox (off by default)

def test_flux_dev_on_a_24_gb_type_is_refused_without_the_fp8_box_naming_it(world):
    model = _put_model(world, "flux", "flux_dev", 34 * 10**9)
    response = _deploy(world.signed_in("admin"), model, "ml.g5.xlarge")
    text = html.unescape(response.text)
    assert response.status_code == 400
    assert 'tick "FP8 weights"' in text and "LoRAs are then not available" in text
    assert world.sagemaker.named("create_model") == []


def test_flux_dev_with_the_fp8_box_deploys_with_fp8_weights_in_its_environment(world):
    model = _put_model(world, "flux", "flux_dev", 34 * 10**9)
    response = _deploy(world.signed_in("admin"), model, "ml.g5.xlarge", fp8_weights="on")
    assert response.status_code == 303, response.text
    environment = _environment(world)
    assert environment["EASEL_FP8_WEIGHTS"] == "on"
    assert environment["EASEL_TEXT_ENCODER_OFFLOAD"] == "1"  # FP8 alone is not enough on 24 GB


def test_sd15_ignores_the_fp8_box(world):
    model = _put_model(world, "sd15", "sd1", 2 * 10**9)
    response = _deploy(world.signed_in("admin"), model, "ml.g5.xlarge", fp8_weights="on")
    assert response.status_code == 303, response.text
    assert "EASEL_FP8_WEIGHTS" not in _environment(world)


def test_the_box_keeps_16_bit_weights_where_they_fit(world_factory):
    world = world_factory(EASEL_ENDPOINT_INSTANCE_TYPES=json.dumps({
        "ml.g6e.xlarge": {"gpu_memory_gb": 48, "instance_storage": True, "hourly_usd": 1.861}}))
    model = _put_model(world, "flux", "flux_dev", 34 * 10**9)
    response = _deploy(world.signed_in("admin"), model, "ml.g6e.xlarge", fp8_weights="on")
    assert response.status_code == 303, response.text
    assert "EASEL_FP8_WEIGHTS" not in _environment(world)


def test_a_model_without_a_manifest_and_the_box_lets_the_server_decide(world):
    world.put("models/bare/model.tar.gz", b"x" * 64)
    model = f"s3://{BUCKET}/models/bare/model.tar.gz"
    response = _deploy(world.signed_in("admin"), model, "ml.g5.xlarge", fp8_weights="on")
    assert response.status_code == 303, response.text
    assert _environment(world)["EASEL_FP8_WEIGHTS"] == "auto"


def test_the_endpoint_list_shows_an_endpoint_with_fp8_weights(world):
    admin = world.signed_in("admin")
    model = _put_model(world, "flux", "flux_dev", 34 * 10**9)
    assert _deploy(admin, model, "ml.g5.xlarge", fp8_weights="on").status_code == 303
    row = re.search(r'<tr data-endpoint="[^"]*demo">(.*?)</tr>', admin.get("/endpoints").text,
                    re.S)
    assert row and '<small class="hint fp8">FP8 weights</small>' in row[1]


def test_the_endpoint_list_shows_no_fp8_for_a_16_bit_endpoint(world):
    admin = world.signed_in("admin")
    model = _put_model(world, "xl", "sdxl", 7 * 10**9)
    assert _deploy(admin, model, "ml.g5.xlarge", fp8_weights="on").status_code == 303
    row = re.search(r'<tr data-endpoint="[^"]*demo">(.*?)</tr>', admin.get("/endpoints").text,
                    re.S)
    assert row and "FP8" not in row[1]


def test_the_deploy_form_offers_the_types_a_model_fits_with_fp8_separately(world):
    _put_model(world, "flux", "flux_dev", 34 * 10**9)
    page = world.signed_in("admin").get("/endpoints").text
    (fits, fits_fp8), = re.findall(
        r'<option value="[^"]+/flux/[^"]*"[^>]*data-fits="([^"]*)" data-fits-fp8="([^"]*)"', page)
    # the 24 GB types only with FP8 weights; the T4 not at all (no bf16)
    assert fits == "" and set(fits_fp8.split()) == {"ml.g5.xlarge", "ml.g6.xlarge"}
    assert 'name="fp8_weights"' in page and "checked" not in re.search(
        r'<input type="checkbox" name="fp8_weights"[^>]*>', page)[0]


def test_a_refused_deploy_keeps_the_fp8_box_ticked(world):
    model = _put_model(world, "flux", "flux_dev", 34 * 10**9)
    response = _deploy(world.signed_in("admin"), model, "ml.g4dn.xlarge", fp8_weights="on")
    assert response.status_code == 400
    assert "checked" in re.search(r'<input type="checkbox" name="fp8_weights"[^>]*>',
                                  response.text)[0]
