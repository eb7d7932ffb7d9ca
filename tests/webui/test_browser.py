"""The portal in a real browser (Debian chromium through Playwright): sign in, add a user, upload
concept photos, deploy, generate, see the gallery, submit training. Screenshots are kept under
test-artifacts/webui/ as test artifacts.

The portal runs in uvicorn against moto in server mode (so the browser can reach the pre-signed
S3 URLs) with the recording SageMaker fakes. Marked `slow`; skipped without chromium/Playwright.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if not Path(CHROMIUM).exists():
    pytest.skip("Debian chromium is not installed", allow_module_level=True)

import uvicorn  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

from easel_contracts.concept_uploads import MIN_CONCEPT_IMAGES  # noqa: E402

from .conftest import ADMIN_PASSWORD, BUCKET, create_resources, make_world  # noqa: E402
from .test_deploy_memory_plan import _put_model  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "webui"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def _png(color: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (48, 48), color).save(buffer, "PNG")
    return buffer.getvalue()


def _lora_archive(name: str) -> bytes:
    import tarfile

    data = b"\x02\x00\x00\x00\x00\x00\x00\x00{}"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(f"Lora/{name}.safetensors")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Any]]:
    probe = _free_socket()
    moto_port = probe.getsockname()[1]
    probe.close()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    moto.start()
    # in-process moto keeps its state between servers: start from nothing
    requests.post(f"http://127.0.0.1:{moto_port}/moto-api/reset", timeout=10)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{moto_port}")
    try:
        create_resources()
        world = make_world()
        world.s3.put_bucket_cors(Bucket=BUCKET, CORSConfiguration={"CORSRules": [{
            "AllowedMethods": ["GET", "POST"], "AllowedOrigins": ["*"],
            "AllowedHeaders": ["*"]}]})
        sock = _free_socket()
        server = uvicorn.Server(uvicorn.Config(world.app, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", world
        server.should_exit = True
        thread.join(timeout=10)
    finally:
        moto.stop()


@pytest.fixture
def page(served: tuple[str, Any]) -> Iterator[Any]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(15000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        yield page
        browser.close()
        assert errors == [], errors


def _shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _sign_in(page: Any, base: str, user: str, password: str) -> None:
    page.goto(f"{base}/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button:has-text('Sign in')")
    page.wait_for_url(f"{base}/generate")


def test_admin_flow_in_a_browser(served, page, tmp_path):
    base, world = served
    page.goto(f"{base}/login")
    _shot(page, "01-login")
    _sign_in(page, base, "admin", ADMIN_PASSWORD)

    # users: add one
    page.goto(f"{base}/users")
    page.fill("form[action='/users'] input[name=username]", "alice")
    page.fill("form[action='/users'] input[name=password]", "alice-password-1")
    page.click("form[action='/users'] button")
    page.wait_for_selector("text=User alice added.")
    assert page.locator("tr[data-user=alice]").count() == 1
    _shot(page, "02-users")

    # concept set: upload the fewest photos training accepts, from the browser
    files = []
    colors = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (40, 200, 200)]
    assert len(colors) == MIN_CONCEPT_IMAGES
    for index, color in enumerate(colors):
        path = tmp_path / f"dog{index}.png"
        path.write_bytes(_png(color))
        files.append(str(path))
    page.goto(f"{base}/models")
    page.fill("#concept-upload input[name=set]", "dogs")
    page.set_input_files("#concept-upload input[name=files]", files)
    page.click("#concept-upload button")
    page.wait_for_selector("article[data-set='admin/dogs'] img")
    assert sorted(world.keys("concepts/admin/dogs/")) == [
        f"concepts/admin/dogs/dog{index}.png" for index in range(MIN_CONCEPT_IMAGES)]
    _shot(page, "03-models-concepts")

    # endpoints: deploy through the form
    world.put("models/tiny.tar.gz", b"x" * 4096)
    page.goto(f"{base}/endpoints")
    page.fill("#deploy-form input[name=name]", "demo")
    page.select_option("#deploy-form select[name=model]", f"s3://{BUCKET}/models/tiny.tar.gz")
    page.select_option("#instance-type", "ml.g6.xlarge")
    assert page.locator("#volume-field").is_visible()  # no instance storage: volume asked
    page.select_option("#instance-type", "ml.g5.xlarge")
    assert not page.locator("#volume-field").is_visible()
    page.click("#deploy-form button")
    page.wait_for_selector("tr[data-endpoint=easel-demo]")
    world.sagemaker.set_status("easel-demo", "InService")
    page.reload()
    page.wait_for_selector("tr[data-endpoint=easel-demo] .s-inservice")
    _shot(page, "04-endpoints")

    # generate: the page submits, polls and shows the image
    page.goto(f"{base}/generate")
    page.wait_for_selector("#checkpoint option:nth-child(2)", state="attached")
    # the ControlNet picker lists the endpoint's ControlNets (its controlnet-models task)
    assert "control_sd15_canny" in [o.get_attribute("value")
                                    for o in page.locator("#cn-model option").all()]
    page.select_option("#lora-pick", "style")
    page.fill("textarea[name=prompt]", "a watercolor fox")
    page.click("#lora-add")
    assert "<lora:style:0.8>" in page.input_value("textarea[name=prompt]")
    page.click("#generate-button")
    page.wait_for_selector("#results .gallery figure img")
    assert "Done" in page.text_content("#generate-form .status")
    sent = json.loads(world.runtime.generations()[-1]["Body"])
    assert sent["payload"]["prompt"] == "a watercolor fox <lora:style:0.8>"
    # the form's size defaults to where the endpoint's model warmed up (its native size)
    assert (sent["payload"]["width"], sent["payload"]["height"]) == (64, 64)
    _shot(page, "05-generate")

    # gallery with reuse
    page.goto(f"{base}/gallery")
    page.click("text=Reuse settings")
    page.wait_for_url(f"{base}/generate?reuse=*")
    assert "watercolor fox" in page.input_value("textarea[name=prompt]")
    page.goto(f"{base}/gallery")
    _shot(page, "06-gallery")

    # training: a bad path is refused, a good one submitted
    page.goto(f"{base}/training")
    page.fill("input[name=name]", "dogs-v1")
    page.fill("input[name=instance_prompt]", "a photo of sks dog")
    page.fill("input[name=concepts_s3_uri]", f"s3://{BUCKET}/concepts/admin/nothing/")
    page.click("button:has-text('Start training')")
    page.wait_for_selector("p.error")
    assert "is empty or does not exist" in page.text_content("p.error")
    assert world.sagemaker.named("create_training_job") == []
    # nothing typed is lost: the refused form comes back filled in; fix the path and go
    assert page.input_value("input[name=name]") == "dogs-v1"
    assert page.input_value("input[name=instance_prompt]") == "a photo of sks dog"
    assert page.input_value("input[name=concepts_s3_uri]").endswith("/concepts/admin/nothing/")
    page.fill("input[name=concepts_s3_uri]", "")
    page.select_option("select[name=concept_set]", "admin/dogs")
    page.click("button:has-text('Start training')")
    page.wait_for_url(f"{base}/training/easel-dogs-v1*")
    assert len(world.sagemaker.named("create_training_job")) == 1
    _shot(page, "07-training-job")

    # the job finishes: progress, previews, then publish the LoRA with one click
    prefix = "training/easel-dogs-v1/"
    world.put(prefix + "checkpoints/progress.json", json.dumps(
        {"step": 800, "total_steps": 800, "loss": 0.08, "status": "completed"}).encode())
    for step, color in ((400, (90, 60, 160)), (800, (60, 140, 90))):
        world.put(prefix + f"checkpoints/preview/step-{step}.png", _png(color))
    world.put(prefix + "output/model.tar.gz", _lora_archive("dogs-v1"))
    world.sagemaker.jobs["easel-dogs-v1"]["TrainingJobStatus"] = "Completed"
    page.goto(f"{base}/training/easel-dogs-v1")
    assert page.locator(".previews img").count() == 2
    page.click("button:has-text('Publish to the LoRA library')")
    page.wait_for_selector("text=<lora:dogs-v1:0.8>")
    assert world.keys("loras/") == ["loras/dogs-v1.safetensors"]
    _shot(page, "08-training-published")


def test_user_sees_no_admin_pages_in_a_browser(served, page):
    base, world = served
    world.add_user("bob")
    _sign_in(page, base, "bob", "user-password-123")
    assert page.locator("nav a:has-text('Endpoints')").count() == 0
    page.goto(f"{base}/users")
    assert "Only administrators" in page.text_content("main")


def test_form_patterns_are_live_in_chromium(served, page):
    """Chromium compiles `pattern` with the `v` flag and ignores one that does not compile; the
    user-name and concept-set checks must catch a bad name before the form is sent."""
    base, _ = served
    _sign_in(page, base, "admin", ADMIN_PASSWORD)
    for url, selector in ((f"{base}/users", "form[action='/users'] input[name=username]"),
                          (f"{base}/models", "#concept-upload input[name=set]")):
        page.goto(url)
        field = page.locator(selector)
        field.fill("Bad Name!")
        assert field.evaluate("input => input.validity.patternMismatch"), selector
        field.fill("good-name_1")
        assert not field.evaluate("input => input.validity.patternMismatch"), selector


def test_png_info_reads_an_image_and_sends_it_to_txt2img(served, page, tmp_path):
    from PIL import Image

    from easel_contracts.infotext import format_infotext
    from easel_inference.images import encode_png

    base, world = served
    world.in_service()
    text = format_infotext("a lighthouse at dusk, <lora:style:0.7>", "blurry, fog", {
        "Steps": 28, "Sampler": "Euler a", "CFG scale": 6.5, "Seed": 1234567,
        "Size": "512x768", "Model hash": "6ce0161689", "Model": "tiny"})
    image = Image.new("RGB", (96, 144), (40, 70, 140))
    path = tmp_path / "lighthouse.png"
    path.write_bytes(base64.b64decode(encode_png(image, parameters=text)))

    _sign_in(page, base, "admin", ADMIN_PASSWORD)
    page.click("nav a:has-text('PNG Info')")
    page.set_input_files("#png-info-form input[name=file]", str(path))
    page.click("#png-info-form button")
    page.wait_for_selector("#png-info-result")
    assert page.text_content("pre.infotext") == text
    shown = dict(zip(page.locator("table.parameters th").all_text_contents(),
                     page.locator("table.parameters td").all_text_contents(), strict=True))
    assert shown["Seed"] == "1234567" and shown["Sampler"] == "Euler a"
    assert shown["Negative prompt"] == "blurry, fog"
    _shot(page, "09-png-info")

    page.click("button:has-text('Send to txt2img')")
    page.wait_for_url(f"{base}/generate?*")
    assert page.input_value("textarea[name=prompt]") == "a lighthouse at dusk, <lora:style:0.7>"
    assert page.input_value("textarea[name=negative_prompt]") == "blurry, fog"
    assert page.input_value("input[name=seed]") == "1234567"
    assert page.input_value("input[name=steps]") == "28"
    assert page.input_value("input[name=cfg_scale]") == "6.5"
    assert (page.input_value("input[name=width]"), page.input_value("input[name=height]")) == \
        ("512", "768")

    # an empty file as the img2img input is named in the page, before anything is sent
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    page.check("#img2img")
    page.set_input_files("#init-file", str(empty))
    page.click("#generate-button")
    page.wait_for_selector("#generate-form .status:has-text('is empty')")
    assert "empty.png is empty (0 bytes); choose an image file" in \
        page.text_content("#generate-form .status")
    tasks = [json.loads(call["Body"])["task"] for call in world.runtime.generations()]
    assert "img2img" not in tasks and "txt2img" not in tasks


def test_progress_bar_moves_and_interrupt_stops_the_generation(served, page):
    base, world = served
    world.in_service()
    world.runtime.step_delay = 0.05  # 150 steps: about 7.5 s unless interrupted
    _sign_in(page, base, "admin", ADMIN_PASSWORD)
    page.wait_for_selector("#checkpoint option:nth-child(2)", state="attached")
    page.fill("textarea[name=prompt]", "a slow lighthouse")
    page.fill("input[name=steps]", "150")
    page.click("#generate-button")
    page.wait_for_selector("#live-preview", state="visible")
    first = page.eval_on_selector("#generate-progress", "bar => bar.value")
    page.wait_for_function(
        "value => document.querySelector('#generate-progress').value > value", arg=first)
    assert page.text_content("#generate-form .status").startswith("Step ")
    _shot(page, "10-generate-progress")
    page.click("#interrupt-button")
    page.wait_for_selector("#generate-form .status:has-text('Interrupted')")
    assert not page.locator("#generate-progress").is_visible()
    stream = world.runtime.streams[-1]
    assert stream.closed and stream.sent < 150


def test_the_fp8_box_offers_the_types_a_model_fits_only_with_fp8_weights(served, page):
    base, world = served
    model = _put_model(world, "flux", "flux_dev", 34 * 10**9)
    _sign_in(page, base, "admin", ADMIN_PASSWORD)
    page.goto(f"{base}/endpoints")
    page.select_option("#deploy-form select[name=model]", model)
    g5 = page.locator("#instance-type option[value='ml.g5.xlarge']")
    assert g5.is_disabled()
    page.check("#fp8-weights")
    assert not g5.is_disabled()
    assert page.locator("#instance-type option[value='ml.g4dn.xlarge']").is_disabled()
    page.uncheck("#fp8-weights")
    assert g5.is_disabled()
