"""Models page: models and LoRAs with sizes, LoRA upload, concept sets with pre-signed uploads."""

from __future__ import annotations

import io
import struct

import boto3
import requests
from PIL import Image

from .conftest import BUCKET, REGION


def _png(color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _post_to_s3(upload: dict, body: bytes, content_type: str | None = None) -> int:
    fields = dict(upload["fields"])
    if content_type:
        fields["Content-Type"] = content_type
    return requests.post(upload["url"], data=fields, files={"file": ("f", body)},
                         timeout=10).status_code


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


def test_presigned_post_uploads_to_staging_and_verify_moves_files_into_the_set(world):
    world.add_user("alice")
    alice = world.signed_in("alice")
    answer = alice.post("/models/concepts/presign", json={
        "set": "dogs", "files": [{"name": "1.png", "type": "image/png"},
                                 {"name": "1.txt", "type": "text/plain"}]})
    assert answer.status_code == 200, answer.text
    uploads = answer.json()["uploads"]
    assert [u["key"] for u in uploads] == ["concepts/alice/.incoming/dogs/1.png",
                                           "concepts/alice/.incoming/dogs/1.txt"]
    # the browser's POST goes to S3 (moto intercepts it), not through the portal
    for upload, body in zip(uploads, [_png(), b"a photo of sks dog"], strict=True):
        assert _post_to_s3(upload, body) in (200, 204)
    assert "dogs" not in alice.get("/models").text  # staged, not yet verified: not listed
    verified = alice.post(answer.json()["verify"], json={"set": "dogs", "names": ["1.png", "1.txt"]})
    assert verified.json() == {"stored": ["1.png", "1.txt"], "rejected": []}
    s3 = boto3.client("s3", region_name=REGION)
    stored = s3.get_object(Bucket=BUCKET, Key="concepts/alice/dogs/1.png")
    assert stored["ContentType"] == "image/png"
    assert world.keys("concepts/alice/.incoming/") == []
    page = alice.get("/models")
    assert "dogs" in page.text and "1 image, 1 caption," in page.text


def test_presign_fixes_the_content_type_from_the_extension(world):
    """A browser asking for text/html on a .png gets an image/png policy, and S3 holds it to it."""
    admin = world.signed_in("admin")
    answer = admin.post("/models/concepts/presign", json={
        "set": "x", "files": [{"name": "a.png", "type": "text/html"}]})
    upload = answer.json()["uploads"][0]
    assert upload["fields"]["Content-Type"] == "image/png"


def test_verify_refuses_non_images_and_empty_files_and_lists_nothing(world):
    world.add_user("alice")
    alice = world.signed_in("alice")
    names = ["page.png", "empty.png", "truncated.png", "bad.txt"]
    bodies = [b"<html><script>alert(1)</script></html>", b"", _png()[:30], b"\xff\xfe\xfa"]
    for name, body in zip(names, bodies, strict=True):
        world.put(f"concepts/alice/.incoming/cats/{name}", body)
    answer = alice.post("/models/concepts/verify", json={"set": "cats", "names": names}).json()
    assert answer["stored"] == []
    reasons = {r["name"]: r["error"] for r in answer["rejected"]}
    assert "not a PNG image" in reasons["page.png"]
    assert "empty" in reasons["empty.png"]
    assert "cannot be decoded" in reasons["truncated.png"]
    assert "UTF-8" in reasons["bad.txt"]
    assert world.keys("concepts/alice/") == []  # rejected staged files are deleted too
    assert "cats" not in alice.get("/models").text


def test_verify_of_a_name_never_uploaded_says_so(world):
    alice_set = {"set": "cats", "names": ["ghost.png"]}
    world.add_user("alice")
    answer = world.signed_in("alice").post("/models/concepts/verify", json=alice_set).json()
    assert answer["rejected"][0]["error"] == "ghost.png: nothing was uploaded under this name"


def test_verify_only_reads_the_callers_own_staging_prefix(world):
    world.add_user("alice")
    world.add_user("bob")
    world.put("concepts/alice/.incoming/dogs/1.png", _png())
    answer = world.signed_in("bob").post("/models/concepts/verify",
                                         json={"set": "dogs", "names": ["1.png"]}).json()
    assert answer["stored"] == []
    assert world.keys("concepts/bob/") == []
    assert world.keys("concepts/alice/") == ["concepts/alice/.incoming/dogs/1.png"]


def test_presign_and_verify_bodies_are_checked_with_a_clear_error(world):
    admin = world.signed_in("admin")
    for route, body in [("presign", b"not json"), ("presign", b'{"set": "a", "files": []}'),
                        ("verify", b'{"set": "a"}'), ("verify", b"[1, 2]")]:
        response = admin.post(f"/models/concepts/{route}", content=body,
                              headers={"Content-Type": "application/json"})
        assert response.status_code == 400, (route, body)
        assert "send JSON" in response.json()["detail"]


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
                          files=[("files", ("a.png", _png())), ("files", ("a.txt", b"cap"))])
    assert response.status_code == 303
    assert sorted(world.keys("concepts/alice/cats/")) == ["concepts/alice/cats/a.png",
                                                          "concepts/alice/cats/a.txt"]
    s3 = boto3.client("s3", region_name=REGION)
    head = s3.head_object(Bucket=BUCKET, Key="concepts/alice/cats/a.png")
    assert head["ContentType"] == "image/png"


def test_fallback_upload_refuses_a_text_file_renamed_png(world):
    world.add_user("alice")
    alice = world.signed_in("alice")
    response = alice.post("/models/concepts/upload", data={"set": "cats"},
                          headers={"Accept": "application/json"},
                          files=[("files", ("a.png", b"hello, I am text")),
                                 ("files", ("b.png", _png()))])
    assert response.json()["stored"] == ["b.png"]
    assert "not a PNG image" in response.json()["rejected"][0]["error"]
    assert world.keys("concepts/alice/cats/") == ["concepts/alice/cats/b.png"]


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
