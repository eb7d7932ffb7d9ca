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


def _deploy(client, model: str, instance_type: str):
    return client.post("/endpoints", data={
        "name": "demo", "model": model, "instance_type": instance_type, "mode": "realtime",
        "min_instances": "1", "max_instances": "1", "idle_ttl_hours": "1"})


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
