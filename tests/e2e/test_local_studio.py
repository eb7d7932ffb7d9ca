"""End to end: `make local` (python -m local.studio) driven through a real browser.

One journey, as people use the kit: the admin signs in with the printed password, adds a user and
deploys the demo model; the user generates (txt2img, img2img) and finds both in the gallery,
uploads a concept set, trains a LoRA, watches the progress bar finish, publishes it and uses it
with `<lora:...>`; an empty concepts path is refused with a clear error and no job; the A1111 API
does the same with HTTP Basic auth; the admin deletes the endpoint; Ctrl-C (SIGINT) stops
everything, leaving no process and no open port.

Real processes on the CPU (moto server, SageMaker stand-in, `serve` and `train` on the tiny
random-weight demo model): marked `slow`, guarded by a hard timeout, skipped without Debian
chromium or Playwright. Screenshots of every step go to test-artifacts/e2e/.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from .conftest import Studio
from .processes import descendants, describe, group_members, port_open, still_alive

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if not Path(CHROMIUM).exists():
    pytest.skip("Debian chromium is not installed", allow_module_level=True)
local_settings = pytest.importorskip("local.settings", reason="local/ runtime not available")
if local_settings.console_script("serve") is None or local_settings.console_script("train") is None:
    pytest.skip("the serve/train entry points are not installed", allow_module_level=True)

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "e2e"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
HARD_TIMEOUT_S = int(os.environ.get("EASEL_E2E_TIMEOUT", "300"))  # the 5-minute budget
USER, USER_PASSWORD = "alice", "alice-e2e-password-1"
ENDPOINT = "easel-demo"
JOB = "easel-toy-lora"
LORA = "sks-toy"
T = TypeVar("T")


class HardTimeout(Exception):
    """The journey ran past its hard limit."""


@pytest.fixture
def hard_timeout() -> Iterator[None]:
    """Fail (never hang) when the journey, studio start-up included, runs too long."""

    def expire(_signum: int, _frame: object) -> None:
        raise HardTimeout(f"the e2e journey ran past its hard limit of {HARD_TIMEOUT_S} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(HARD_TIMEOUT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _png(seed: int, size: int = 64) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (40 * seed % 255, 110, 210 - 20 * seed))
    ImageDraw.Draw(image).ellipse((6 + seed, 6 + seed, size - 8, size - 8), fill=(250, 190, 30))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _wait(check: Callable[[], T], *, timeout: float, what: str, interval: float = 1.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Journey:
    """The browser side: one context per person, a screenshot per step."""

    def __init__(self, browser: Any, studio: Studio) -> None:
        self.browser = browser
        self.studio = studio
        self.base = studio.url
        self.errors: list[str] = []
        self.shots = 0

    def person(self, user: str, password: str) -> Any:
        context = self.browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(30000)
        page.on("pageerror", lambda exc: self.errors.append(f"{user}: {exc}"))
        page.on("dialog", lambda dialog: dialog.accept())  # the data-confirm prompts
        page.goto(f"{self.base}/login")
        page.fill("input[name=username]", user)
        page.fill("input[name=password]", password)
        page.click("button:has-text('Sign in')")
        page.wait_for_url(f"{self.base}/generate", timeout=30000)
        return page

    def shot(self, page: Any, name: str) -> None:
        self.shots += 1
        page.screenshot(path=str(ARTIFACTS / f"{self.shots:02d}-{name}.png"), full_page=True)


def _generate(journey: Journey, page: Any, *, prompt: str, init_image: Path | None = None) -> str:
    """Fill the Generate form (1 step, 64x64), submit, and wait for the page's final status."""
    page.goto(f"{journey.base}/generate")
    # the model list comes from the endpoint: wait until the page has read it
    page.wait_for_selector("#checkpoint option:nth-child(2)", state="attached", timeout=60000)
    page.fill("textarea[name=prompt]", prompt)
    for name, value in (("steps", "1"), ("width", "64"), ("height", "64"), ("seed", "7")):
        page.fill(f"#generate-form input[name={name}]", value)
    if init_image is not None:
        page.check("#img2img")
        page.set_input_files("#init-file", str(init_image))
    page.click("#generate-button")
    status = page.locator("#generate-form .status")
    sync_api.expect(status).to_have_text(re.compile(r"^(Done|Failed)"), timeout=120000)
    return status.text_content() or ""


def test_local_studio_end_to_end(hard_timeout: None, studio: Studio, tmp_path: Path) -> None:
    started = time.monotonic()
    shutil.rmtree(ARTIFACTS, ignore_errors=True)  # only this run's screenshots
    ARTIFACTS.mkdir(parents=True)
    demo_uri = next((m.group(0) for line in studio.stdout_lines
                     if (m := re.search(r"s3://\S+/models/demo/model\.tar\.gz", line))), None)
    assert demo_uri, f"the studio did not print the demo model's URI: {studio.stdout_lines}"
    bucket = demo_uri.split("/")[2]
    _wait(lambda: any("Ctrl-C" in line for line in studio.stdout_lines), timeout=10,
          interval=0.2, what=f"the studio to say how to stop it: {studio.stdout_lines}")

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        journey = Journey(browser, studio)
        try:
            _journey_in_the_browser(journey, studio, bucket=bucket, demo_uri=demo_uri,
                                    tmp_path=tmp_path)
        finally:
            browser.close()
        assert journey.errors == [], f"script errors in the pages: {journey.errors}"

    # --- Ctrl-C: everything stops, nothing is left
    process = studio.process
    studio.seen |= descendants(process.pid)
    assert studio.seen, "the studio should have started child processes (emulator, portal...)"
    emulator_port = int((studio.state / "run" / "emulator.port").read_text().strip())
    assert port_open(emulator_port), "the AWS emulator should be listening before the stop"
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in its terminal does
    try:
        code = process.wait(timeout=60)
    except Exception as error:  # noqa: BLE001 - report the hang with the logs
        raise AssertionError(f"the studio did not stop within 60 s of SIGINT\n"
                             f"{studio.log_tail()}") from error
    assert code == 0, f"the studio exited with {code} after SIGINT\n{studio.log_tail()}"
    assert studio.stderr_path is not None
    assert "stopped; nothing left running." in studio.stderr_path.read_text(), (
        f"the studio should confirm that it stopped\n{studio.log_tail()}")
    deadline = time.monotonic() + 10
    while (alive := still_alive(studio.seen)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive, f"processes the studio started are left: {describe(alive)}"
    assert group_members(process.pid) == [], (
        f"processes of the studio's group are left: {describe(group_members(process.pid))}")
    assert not port_open(studio.port), f"the portal port {studio.port} is still open"
    assert not port_open(emulator_port), f"the AWS emulator's port {emulator_port} is still open"
    elapsed = time.monotonic() - started
    print(f"\ne2e journey (after start-up) took {elapsed:.0f} s")


def _journey_in_the_browser(journey: Journey, studio: Studio, *, bucket: str, demo_uri: str,
                            tmp_path: Path) -> None:
    base = journey.base

    # 1. the admin signs in with the printed password
    admin = journey.browser.new_context().new_page()
    admin.goto(f"{base}/login")
    journey.shot(admin, "login")
    admin.context.close()
    admin = journey.person("admin", studio.password)
    journey.shot(admin, "admin-signed-in")

    # 2. adds a user
    admin.goto(f"{base}/users")
    admin.fill("form[action='/users'] input[name=username]", USER)
    admin.fill("form[action='/users'] input[name=password]", USER_PASSWORD)
    admin.click("form[action='/users'] button")
    admin.wait_for_selector(f"tr[data-user={USER}]")
    assert admin.locator(f"tr[data-user={USER}]").count() == 1, "the new user is not listed"
    journey.shot(admin, "user-added")

    # 3. deploys the demo model (the endpoint starts while the user works on the concept set)
    admin.goto(f"{base}/endpoints")
    admin.fill("#deploy-form input[name=name]", "demo")
    admin.select_option("#deploy-form select[name=model]", demo_uri)
    admin.fill("#deploy-form input[name=idle_ttl_hours]", "0")
    admin.click("#deploy-form button")
    admin.wait_for_selector(f"tr[data-endpoint={ENDPOINT}]")
    journey.shot(admin, "endpoint-creating")

    # 4. the user uploads a concept set through the browser
    user = journey.person(USER, USER_PASSWORD)
    assert user.locator("nav a:has-text('Endpoints')").count() == 0, (
        "a user (not an admin) should not be offered the Endpoints page")
    files = []
    for index in range(5):
        path = tmp_path / f"toy{index}.png"
        path.write_bytes(_png(index))
        files.append(str(path))
    caption = tmp_path / "toy0.txt"
    caption.write_text("a photo of sks toy on a table")
    files.append(str(caption))
    user.goto(f"{base}/models")
    user.fill("#concept-upload input[name=set]", "toys")
    user.set_input_files("#concept-upload input[name=files]", files)
    user.click("#concept-upload button")
    user.wait_for_selector(f"article[data-set='{USER}/toys'] img", timeout=60000)
    assert user.locator(f"article[data-set='{USER}/toys'] .thumbs img").count() == 5, (
        "the uploaded concept set should show its 5 images")
    journey.shot(user, "concept-set-uploaded")

    # 5. a concept set with no images (only a caption) is refused with a clear error, and no
    #    job is created
    empty_caption = tmp_path / "only-a-caption.txt"
    empty_caption.write_text("a caption without its image")
    user.fill("#concept-upload input[name=set]", "no-images")
    user.set_input_files("#concept-upload input[name=files]", [str(empty_caption)])
    user.click("#concept-upload button")
    user.wait_for_selector(f"article[data-set='{USER}/no-images']", timeout=60000)
    user.goto(f"{base}/training")
    empty_job = "empty-concepts"
    user.fill("input[name=name]", empty_job)
    user.fill("input[name=instance_prompt]", "a photo of sks toy")
    user.select_option("select[name=concept_set]", f"{USER}/no-images")
    user.click("button:has-text('Start training')")
    user.wait_for_selector("p.error")
    error = user.text_content("p.error") or ""
    assert "concepts" in error.lower() and "image" in error.lower(), (
        f"the error should say the concept set holds no images: {error!r}")
    assert user.input_value("input[name=instance_prompt]") == "a photo of sks toy", (
        "the refused training form lost what was typed")
    journey.shot(user, "empty-concepts-refused")
    user.goto(f"{base}/training")
    assert user.locator(f"tr[data-job=easel-{empty_job}]").count() == 0, (
        "a job was listed although its concept set held no images")
    assert not _stand_in_has_job(studio, f"easel-{empty_job}"), (
        "the SageMaker stand-in got a training job although the concept set held no images")

    # 6. trains a LoRA on the uploaded set: 2 steps at 64 px, rank 4
    user.fill("input[name=name]", JOB.removeprefix("easel-"))
    user.select_option("select[name=concept_set]", f"{USER}/toys")
    user.fill("input[name=instance_prompt]", "a photo of sks toy")
    user.fill("input[name=output_name]", LORA)
    user.fill("input[name=max_train_steps]", "2")
    user.fill("input[name=rank]", "4")
    user.fill("input[name=resolution]", "64")
    user.click("button:has-text('Start training')")
    user.wait_for_url(f"{base}/training/{JOB}*")
    journey.shot(user, "training-submitted")
    assert _stand_in_has_job(studio, JOB), "the SageMaker stand-in has no record of the job"
    # a second tab stays on the job page: its own script follows the job (no reloads by the test)
    watcher = user.context.new_page()
    watcher.on("pageerror", lambda exc: journey.errors.append(f"job page: {exc}"))
    watcher.goto(f"{base}/training/{JOB}")
    first_seen = (watcher.text_content(".job-status") or "").strip()

    # 7. the endpoint reaches InService (the admin's page, polled)
    def endpoint_status() -> str | None:
        admin.reload()
        cell = admin.locator(f"tr[data-endpoint={ENDPOINT}] td.status")
        status = (cell.text_content() or "").strip()
        assert not status.startswith("Failed"), f"the endpoint failed: {status}\n" \
            f"{studio.log_tail()}"
        return status if status.startswith("InService") else None

    _wait(endpoint_status, timeout=180, interval=2, what=f"{ENDPOINT} InService")
    studio.seen |= descendants(studio.process.pid)  # the endpoint's server, the training job
    journey.shot(admin, "endpoint-in-service")

    # 8. the user generates txt2img and img2img and finds both in the gallery
    outcome = _generate(journey, user, prompt="e2e lighthouse txt2img")
    assert outcome.startswith("Done"), f"txt2img did not finish: {outcome}"
    assert user.locator("#results .gallery figure img").count() == 1
    journey.shot(user, "txt2img-done")
    init = tmp_path / "init.png"
    init.write_bytes(_png(3))
    outcome = _generate(journey, user, prompt="e2e harbor img2img", init_image=init)
    assert outcome.startswith("Done"), f"img2img did not finish: {outcome}"
    journey.shot(user, "img2img-done")
    user.goto(f"{base}/gallery")
    for prompt in ("e2e lighthouse txt2img", "e2e harbor img2img"):
        image = user.locator(f".gallery figure img[alt='{prompt}']")
        assert image.count() == 1, f"the gallery should show the image of {prompt!r}"
        image.scroll_into_view_if_needed()
        _wait(lambda image=image: image.evaluate("i => i.complete && i.naturalWidth > 0"),
              timeout=15, interval=0.5, what=f"the gallery image of {prompt!r} to load")
    journey.shot(user, "gallery")

    # 9. the training progress bar finishes, followed by the job page itself
    # the page polls the status and reloads itself when the job ends: data-final turns "yes"
    watcher.wait_for_selector("#job[data-final=yes]", state="attached", timeout=180000)
    final = (watcher.text_content(".job-status") or "").strip()
    assert final == "Completed", (
        f"the training job ended {final!r} (first seen {first_seen!r}): "
        f"{watcher.text_content('#job')}\n{studio.log_tail()}")
    progress = watcher.get_attribute("#job progress", "value")
    assert progress is not None and float(progress) == 100.0, (
        f"the progress bar should be full: {progress}")
    user.goto(f"{base}/training/{JOB}")
    journey.shot(watcher, "training-completed")
    watcher.close()

    # 10. publishes the LoRA and generates with it on the running endpoint
    user.click("button:has-text('Publish to the LoRA library')")
    user.wait_for_selector(f"text=<lora:{LORA}:0.8>")
    assert ENDPOINT in (user.text_content("main") or ""), (
        "the published LoRA should list the endpoint serving its base model")
    journey.shot(user, "lora-published")
    outcome = _generate(journey, user, prompt=f"a photo of sks toy <lora:{LORA}:0.8>")
    assert outcome.startswith("Done"), f"generation with the LoRA did not finish: {outcome}"
    journey.shot(user, "generated-with-lora")

    # 11. the same through the A1111 API, with HTTP Basic auth
    _a1111_api(base, init)
    user.goto(f"{base}/gallery")
    for prompt in ("api fox txt2img", "api fox img2img"):
        assert user.locator(f".gallery figure img[alt^='{prompt}']").count() == 1, (
            f"the A1111 API's image {prompt!r} should be in the caller's gallery")
    journey.shot(user, "gallery-with-api-images")

    # 12. the admin deletes the endpoint
    admin.goto(f"{base}/endpoints")
    admin.click(f"tr[data-endpoint={ENDPOINT}] button:has-text('Delete')")

    def endpoint_gone() -> bool:
        admin.goto(f"{base}/endpoints")
        return admin.locator(f"tr[data-endpoint={ENDPOINT}]").count() == 0

    _wait(endpoint_gone, timeout=60, interval=1, what=f"{ENDPOINT} to be deleted")
    journey.shot(admin, "endpoint-deleted")


def _a1111_api(base: str, init: Path) -> None:
    with httpx.Client(base_url=base, auth=(USER, USER_PASSWORD), timeout=120) as api:
        assert api.get("/sdapi/v1/sd-models", auth=(USER, "wrong-password-0")).status_code == 401
        models = api.get("/sdapi/v1/sd-models")
        assert models.status_code == 200, models.text
        assert "demo" in [m.get("model_name") for m in models.json()], (
            f"/sdapi/v1/sd-models should list the demo checkpoint: {models.json()}")
        loras = api.get("/sdapi/v1/loras")
        assert loras.status_code == 200, loras.text
        # the endpoint's own Lora/ folder (the demo model ships two) and the published library
        assert {"style-kohya", "detail-diffusers", LORA} <= {i.get("name") for i in loras.json()}, (
            f"/sdapi/v1/loras should list the demo model's and the published LoRAs: {loras.json()}")
        payload = {"prompt": f"api fox txt2img <lora:{LORA}:0.5>", "steps": 1, "width": 64,
                   "height": 64, "seed": 3}
        answer = api.post("/sdapi/v1/txt2img", json=payload)
        assert answer.status_code == 200, answer.text
        assert base64.b64decode(answer.json()["images"][0]).startswith(b"\x89PNG")
        assert LORA in answer.json()["info"], (
            f"the answer's info should name the LoRA it applied: {answer.json()['info']}")
        answer = api.post("/sdapi/v1/img2img", json={
            **payload, "prompt": "api fox img2img", "denoising_strength": 0.5,
            "init_images": [base64.b64encode(init.read_bytes()).decode()]})
        assert answer.status_code == 200, answer.text
        assert base64.b64decode(answer.json()["images"][0]).startswith(b"\x89PNG")


def _stand_in_has_job(studio: Studio, job: str) -> bool:
    """Whether the SageMaker stand-in holds a training-job record named ``job``."""
    return (studio.state / "sagemaker" / "records" / "training-job" / f"{job}.json").exists()
