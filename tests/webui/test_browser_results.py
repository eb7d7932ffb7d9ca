"""Issue 18's results pages in a real browser (Debian chromium, test_browser's fixtures): a stopped
job's timeline with Resume and Publish last checkpoint, and a batch's grid in the gallery beside its images.
Their screenshots are the README's 13 and 14. Also a starting job's phase, followed by the page's poll."""

from __future__ import annotations

import json
from typing import Any

import pytest

from easel_contracts.concept_uploads import MIN_CONCEPT_IMAGES
from easel_contracts.invocations import GenerationResponse

from .conftest import ADMIN_PASSWORD
from .fakes import png_b64
from .test_browser import _png, _shot, _sign_in, page, served  # noqa: F401 - fixtures
from .test_training_checkpoint_publish import lora_bytes

pytestmark = pytest.mark.slow

JOB = "easel-dogs-v1"
CHECKPOINTS = f"training/{JOB}/checkpoints/"


def _stopped_job(tab: Any, base: str, world: Any) -> None:
    """dogs-v1 submitted through the form, then stopped at step 500 of 800 with previews and two
    checkpoints (each with its LoRA) in its checkpoint folder."""
    world.put("models/tiny.tar.gz", b"x" * 4096)
    for index in range(MIN_CONCEPT_IMAGES):
        world.put(f"concepts/admin/dogs/dog{index}.png", _png((40 * index, 90, 160)))
    _sign_in(tab, base, "admin", ADMIN_PASSWORD)
    tab.goto(f"{base}/training")
    tab.fill("input[name=name]", "dogs-v1")
    tab.fill("input[name=instance_prompt]", "a photo of sks dog")
    tab.select_option("select[name=concept_set]", "admin/dogs")
    tab.click("button:has-text('Start training')")
    tab.wait_for_url(f"{base}/training/{JOB}*")
    world.put(CHECKPOINTS + "progress.json", json.dumps(
        {"step": 500, "total_steps": 800, "loss": 0.0912, "status": "stopped"}).encode())
    for step in range(100, 501, 100):
        world.put(CHECKPOINTS + f"preview/step-{step}.png",
                  _png((60 + step // 4, 140 - step // 5, 90 + step // 10)))
    for step in (250, 500):
        world.put(CHECKPOINTS + f"checkpoint-{step}/state.json", b'{"format": 2}')
        world.put(CHECKPOINTS + f"checkpoint-{step}/lora.safetensors", lora_bytes(step))
    world.sagemaker.jobs[JOB]["TrainingJobStatus"] = "Stopped"


def test_publish_last_checkpoint_button_puts_its_lora_in_the_library(served, page):  # noqa: F811
    base, world = served
    _stopped_job(page, base, world)
    page.goto(f"{base}/training/{JOB}")
    assert page.locator("#timeline figcaption").all_text_contents() == [
        f"step {step}" for step in range(100, 501, 100)]
    assert page.locator("#resume button").is_visible()
    page.click("#checkpoint-lora button:has-text('Publish last checkpoint (step 500)')")
    page.wait_for_selector("p.notice:has-text('<lora:dogs-v1-step500:0.8>')")
    assert world.keys("loras/") == ["loras/dogs-v1-step500.safetensors"]
    assert "from the checkpoint at step 500" in page.text_content("#checkpoint-lora")
    _shot(page, "14-training-checkpoint")


def test_publish_last_checkpoint_refusal_shows_in_the_page(served, page):  # noqa: F811
    base, world = served
    _stopped_job(page, base, world)
    world.put(CHECKPOINTS + "checkpoint-500/lora.safetensors", b"cut short")
    page.goto(f"{base}/training/{JOB}")
    page.click("#checkpoint-lora button")
    page.wait_for_selector("p.error:has-text('checkpoint at step 500 cannot be read')")
    assert world.keys("loras/") == []


def test_a_batchs_grid_shows_in_the_gallery_beside_its_images(served, page):  # noqa: F811
    base, world = served
    world.in_service()
    colors = [(200, 60, 60), (60, 160, 90), (70, 90, 200), (220, 180, 60)]
    world.runtime.raw_answers["txt2img"] = GenerationResponse(
        images=[png_b64(color, size=64) for color in colors], parameters={},
        info=json.dumps({"all_seeds": [41, 42, 43, 44], "width": 64, "height": 64,
                         "steps": 20})).model_dump()
    _sign_in(page, base, "admin", ADMIN_PASSWORD)
    page.wait_for_selector("#checkpoint option:nth-child(2)", state="attached")
    page.fill("textarea[name=prompt]", "four seasons of a lighthouse")
    page.fill("input[name=batch_size]", "4")  # one invocation: the stand-in answers 4 images
    page.click("#generate-button")
    page.wait_for_selector("#results .gallery figure img")
    page.goto(f"{base}/gallery")
    captions = page.locator(".gallery figcaption small").all_text_contents()
    assert sum(c.endswith("· grid") for c in captions) == 1
    seeds = sorted(c.split("seed ")[1][:2] for c in captions if "64x64 · 20 steps" in c)
    assert seeds == ["41", "42", "43", "44"]
    _shot(page, "13-gallery-grid")


def test_the_job_page_follows_the_phase_before_the_first_step(served, page):  # noqa: F811
    """The page says what a starting job does and its poll moves the words on without a reload
    (the poll's 10 s wait run on Playwright's clock)."""
    base, world = served
    page.clock.install()
    _stopped_job(page, base, world)  # submitted through the form; made running again below
    world.sagemaker.jobs[JOB]["TrainingJobStatus"] = "InProgress"
    world.put(CHECKPOINTS + "progress.json", json.dumps(
        {"step": 0, "total_steps": 800, "status": "running", "phase": "loading"}).encode())
    page.goto(f"{base}/training/{JOB}")
    assert page.text_content("#job .phase") == "Loading the base model…"
    page.evaluate("window.__same_page = true")
    world.put(CHECKPOINTS + "progress.json", json.dumps(
        {"step": 0, "total_steps": 800, "status": "running", "phase": "first_step"}).encode())
    page.clock.run_for(11_000)
    page.wait_for_function("() => document.querySelector('#job .phase').textContent"
                           ".startsWith('Preparing the first step')")
    assert page.evaluate("window.__same_page") is True  # updated in place, not reloaded
