"""Models page: models and LoRAs with sizes, LoRA upload, concept sets with pre-signed uploads."""

from __future__ import annotations

import struct

import boto3
import requests

from .conftest import BUCKET, REGION


def _safetensors() -> bytes:
    header = b'{"__metadata__":{}}'
    return struct.pack("<Q", len(header)) + header


def test_models_and_loras_are_listed_with_sizes(world):
    world.put("models/sd15.tar.gz", b"x" * 2048)
    world.put("models/sdxl/Stable-diffusion/base.safetensors", b"y" * 4096)
    world.put("models/sdxl/Lora/l.safetensors", b"z" * 1024)
    world.put("loras/watercolor.safetensors", b"w" * 3000)
    page = world.signed_in("admin").get("/models")
    assert "sd15.tar.gz" in page.text and "2.0 KB" in page.text
    assert "sdxl/" in page.text and "5.0 KB" in page.text  # folder size = all its files
    assert "watercolor" in page.text and "&lt;lora:watercolor:0.8&gt;" in page.text


def test_lora_upload_goes_to_the_library(world):
    world.add_user("alice")
    alice = world.signed_in("alice")
    response = alice.post("/models/loras", files={"file": ("pixel-art.safetensors",
                                                           _safetensors())})
    assert "notice=" in response.headers["location"]
    assert world.keys("loras/") == ["loras/pixel-art.safetensors"]
    again = alice.post("/models/loras", files={"file": ("pixel-art.safetensors", _safetensors())})
    assert "already+in+the+library" in again.headers["location"] or \
        "already%20in%20the%20library" in again.headers["location"]


def test_lora_upload_refuses_other_files(world):
    admin = world.signed_in("admin")
    for name, data in [("evil.ckpt", _safetensors()), ("../x.safetensors", _safetensors()),
                       ("junk.safetensors", b"\xff" * 16)]:
        response = admin.post("/models/loras", files={"file": (name, data)})
        assert "error=" in response.headers["location"], name
    assert world.keys("loras/") == []


def test_presigned_post_uploads_straight_to_the_users_concepts_prefix(world):
    world.add_user("alice")
    alice = world.signed_in("alice")
    answer = alice.post("/models/concepts/presign", json={
        "set": "dogs", "files": [{"name": "1.png", "type": "image/png"},
                                 {"name": "1.txt", "type": "text/plain"}]})
    assert answer.status_code == 200, answer.text
    uploads = answer.json()["uploads"]
    assert [u["key"] for u in uploads] == ["concepts/alice/dogs/1.png", "concepts/alice/dogs/1.txt"]
    # the browser's POST goes to S3 (moto intercepts it), not through the portal
    s3 = boto3.client("s3", region_name=REGION)
    for upload, body in zip(uploads, [b"\x89PNG data", b"a photo of sks dog"], strict=True):
        result = requests.post(upload["url"], data=upload["fields"],
                               files={"file": ("f", body)}, timeout=10)
        assert result.status_code in (200, 204), result.text
    assert s3.get_object(Bucket=BUCKET, Key="concepts/alice/dogs/1.txt")["Body"].read() == \
        b"a photo of sks dog"
    page = alice.get("/models")
    assert "dogs" in page.text and "1 image, 1 caption," in page.text


def test_presign_refuses_paths_and_non_images(world):
    admin = world.signed_in("admin")
    for files, set_name in [([{"name": "../../models/x.png", "type": "image/png"}], "ok"),
                            ([{"name": "run.sh", "type": "text/x-sh"}], "ok"),
                            ([{"name": "a.png", "type": "image/png"}], "../etc")]:
        response = admin.post("/models/concepts/presign", json={"set": set_name, "files": files})
        assert response.status_code == 400, (files, set_name)
        assert response.json()["detail"]


def test_fallback_upload_through_the_portal(world):
    world.add_user("alice")
    alice = world.signed_in("alice")
    response = alice.post("/models/concepts/upload", data={"set": "cats"},
                          files=[("files", ("a.png", b"\x89PNG")), ("files", ("a.txt", b"cap"))])
    assert response.status_code == 303
    assert sorted(world.keys("concepts/alice/cats/")) == ["concepts/alice/cats/a.png",
                                                          "concepts/alice/cats/a.txt"]


def test_concept_set_thumbnails_and_delete(world):
    world.add_user("alice")
    world.put("concepts/alice/dogs/1.png", b"\x89PNG")
    world.put("concepts/alice/dogs/2.png", b"\x89PNG")
    alice = world.signed_in("alice")
    page = alice.get("/models")
    assert page.text.count("concepts/alice/dogs/") >= 2  # thumbnails are pre-signed URLs
    detail = alice.get("/models/concepts/alice/dogs").json()
    assert sorted(f["name"] for f in detail["files"]) == ["1.png", "2.png"]
    assert alice.post("/models/concepts/alice/dogs/files/delete",
                      data={"name": "1.png"}).status_code == 303
    assert world.keys("concepts/alice/dogs/") == ["concepts/alice/dogs/2.png"]
    assert alice.post("/models/concepts/alice/dogs/delete").status_code == 303
    assert world.keys("concepts/alice/") == []


def _manifest(name: str, family: str) -> bytes:
    from easel_contracts.model_manifest import ManifestCheckpoint, ModelManifest

    return ModelManifest(
        name=name, layout="archive", written_by="upload_model",
        checkpoints=(ManifestCheckpoint(name=name, path=f"Stable-diffusion/{name}.safetensors",
                                        family=family),),
    ).to_json().encode()


def test_model_list_shows_the_family_from_the_manifest_beside_each_model(world):
    world.put("models/flux/model.tar.gz", b"x" * 64)
    world.put("models/flux/easel-model.json", _manifest("flux", "flux_schnell"))
    world.put("models/xl/Stable-diffusion/xl.safetensors", b"y" * 64)
    world.put("models/xl/easel-model.json", _manifest("xl", "sdxl"))
    page = world.signed_in("admin").get("/models").text
    row = page[page.index("<code>flux/model.tar.gz</code>"):]
    assert "FLUX.1 schnell" in row[:row.index("</tr>")]
    row = page[page.index("<code>xl/</code>"):]
    assert "SDXL" in row[:row.index("</tr>")]


def test_model_without_a_manifest_says_how_to_get_one(world):
    world.put("models/old/model.tar.gz", b"x" * 64)
    page = world.signed_in("admin").get("/models").text
    row = page[page.index("<code>old/model.tar.gz</code>"):]
    assert "no manifest" in row[:row.index("</tr>")] and "scripts/upload_model" in page


def test_model_with_a_broken_manifest_says_what_is_wrong(world):
    world.put("models/bad/model.tar.gz", b"x" * 64)
    world.put("models/bad/easel-model.json", b'{"version": 1}')
    page = world.signed_in("admin").get("/models").text
    row = page[page.index("<code>bad/model.tar.gz</code>"):]
    assert "not a valid model manifest" in row[:row.index("</tr>")]
