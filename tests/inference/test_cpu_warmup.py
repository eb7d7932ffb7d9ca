"""The CPU's warm-up: cheap (a 1-step run at the smallest size, a second at twice its side
only when the first was quick; never the native size) and still honest (the work cap admits
only what the device finishes by the deadline).

The device is simulated on a fake clock: each denoising step advances it by what a step of a
full-size SD1.5 cost at that size on this project's 2 loaded CPU cores (bench, 2026-12-06): the
cost barely grows from 64x64 to 256x256 (a step's fixed cost, reading every weight, dominates),
then jumps tenfold at 512x512 (attention over 4096 tokens); beyond, it grows with the square of
the pixels.
"""

from __future__ import annotations

import math

import pytest
from fastapi.testclient import TestClient
from inference_support import invoke, small, wait_ready

from easel_contracts.invocations import Txt2ImgRequest
from easel_contracts.workcap import check_work, deadline_seconds
from easel_inference import app as app_module
from easel_inference.app import build_engine, create_app
from easel_inference.settings import Settings

# the module's fixtures patch these while they live: each server wraps the originals
GENERATE, WARMUP_REQUEST = app_module.generate, app_module.warmup_request
BIG_UNET = app_module.CPU_BIG_UNET_PARAMETERS
DEADLINE = deadline_seconds("async")  # the longest: the one a CPU endpoint can use at all
MEASURED = {64: 17.8, 128: 19.6, 256: 23.0, 512: 241.6}  # side -> seconds of one step


def step_cost(pixels: int) -> float:
    """Seconds of one step over ``pixels``: the measured steps, log-log between them."""
    side = math.sqrt(pixels)
    sides = sorted(MEASURED)
    if side >= sides[-1]:
        return MEASURED[sides[-1]] * (pixels / sides[-1] ** 2) ** 2
    low = max(s for s in sides if s <= side)
    high = min(s for s in sides if s > side)
    share = math.log(side / low) / math.log(high / low)
    return MEASURED[low] * (MEASURED[high] / MEASURED[low]) ** share


class Device:
    """A fake clock that a step advances by ``scale`` x ``step_cost`` at the size generated."""

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self.now = 1000.0
        self.pixels = 64 * 64
        self.runs: list[tuple[int, int, int]] = []
        self.steps = 0

    def __call__(self) -> float:
        return self.now

    def step(self, _step: int) -> None:
        self.steps += 1
        self.now += self.scale * step_cost(self.pixels)

    def cost(self, pixels: int) -> float:
        return self.scale * step_cost(pixels)


def start_server(tiny_model_dir, tmp_path_factory, scale: float, *, big: bool):
    """A server on the CPU whose model's native size is 512x512 (as SD1.5), on the fake device,
    its UNet counted as big (as SD1.5's) or not: (client, engine, device, its warm-up's runs)."""
    device = Device(scale)

    def sized(request, **kwargs):
        device.pixels = request.width * request.height
        device.runs.append((request.width, request.height, request.steps))
        return GENERATE(request, **kwargs)

    def native_512(pipe, name, *, max_pixels):
        return WARMUP_REQUEST(pipe, name, max_pixels=max_pixels).model_copy(
            update={"width": 512, "height": 512})

    settings = Settings(model_dir=tiny_model_dir, default_model="tiny", device="cpu",
                        lora_cache_dir=tmp_path_factory.mktemp("cache"),
                        deadline_seconds=DEADLINE)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(app_module, "generate", sized)
        patch.setattr(app_module, "warmup_request", native_512)
        patch.setattr(app_module, "CPU_BIG_UNET_PARAMETERS", 1 if big else BIG_UNET)
        engine = build_engine(settings)
        engine.clock, engine.step_hook = device, device.step
        with TestClient(create_app(engine=engine)) as client:
            wait_ready(client)
            yield client, engine, device, list(device.runs)


@pytest.fixture(scope="module")
def cpu_server(tiny_model_dir, tmp_path_factory):
    """SD1.5's measured CPU costs, a big UNet."""
    yield from start_server(tiny_model_dir, tmp_path_factory, 1.0, big=True)


@pytest.fixture(scope="module")
def quick_cpu_server(tiny_model_dir, tmp_path_factory):
    """The same growth, a hundred times quicker, a small UNet: a second size is timed."""
    yield from start_server(tiny_model_dir, tmp_path_factory, 0.01, big=False)


SERVERS = ["cpu_server", "quick_cpu_server"]


def test_a_big_models_cpu_warm_up_is_one_step_at_the_smallest_size(cpu_server) -> None:
    client, _engine, _device, warm_up_runs = cpu_server
    assert warm_up_runs == [(64, 64, 1)]  # never 512x512, the native size
    warmed = invoke(client, "options").json()["warmed_up"]
    assert (warmed["width"], warmed["height"], warmed["steps"]) == (64, 64, 1)


def test_a_small_models_cpu_warm_up_is_timed_after_its_first_use_at_two_sizes(
        quick_cpu_server) -> None:
    _client, _engine, _device, warm_up_runs = quick_cpu_server
    assert warm_up_runs == [(64, 64, 1), (64, 64, 1), (128, 128, 1)]


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("side", [64, 128, 256, 384, 512, 768, 1024, 2048, 4096])
def test_the_cpu_speed_over_estimates_a_step_at_every_size(request, server, side) -> None:
    _client, engine, device, _runs = request.getfixturevalue(server)
    assert engine.speed is not None
    # (at the timed size itself the two agree, up to the clock's float rounding)
    assert engine.speed.step_seconds(side * side) >= device.cost(side * side) * (1 - 1e-9)


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("deadline", [deadline_seconds("realtime"), DEADLINE])
def test_the_work_cap_admits_only_what_the_device_finishes_by_the_deadline(
        request, server, deadline) -> None:
    _client, engine, device, _runs = request.getfixturevalue(server)
    admitted = 0
    for side in range(64, 4097, 64):
        for steps in (1, 2, 3, 5, 10, 20, 50, 150):
            generation = Txt2ImgRequest(width=side, height=side, steps=steps)
            if check_work(generation, engine.speed, deadline_s=deadline) is None:
                admitted += 1
                assert steps * device.cost(side * side) <= deadline, (side, steps)
    assert admitted > 0  # and it is not refusing everything


def test_a_request_the_cpu_cannot_finish_is_refused_before_any_step(cpu_server) -> None:
    client, _engine, device, _runs = cpu_server
    device.steps = 0
    steps = 20  # 20 x 241.6 s at 512x512: past even the longest deadline
    assert steps * step_cost(512 * 512) > DEADLINE
    response = invoke(client, "txt2img", small(width=512, height=512, steps=steps))
    assert response.status_code == 400
    assert response.json()["error"] == "TooMuchWork"
    assert device.steps == 0


def test_a_request_the_cpu_speed_admits_is_served_within_its_deadline(cpu_server) -> None:
    client, _engine, device, _runs = cpu_server
    started, device.steps = device.now, 0
    assert invoke(client, "txt2img", small(width=64, height=64, steps=20)).status_code == 200
    assert device.steps == 20 and device.now - started <= DEADLINE


def test_a_slow_small_model_whose_step_grows_with_the_square_is_still_over_estimated(
        tiny_model_dir, tmp_path_factory) -> None:
    """A small model at its own native size (64x64) whose step grows with the square of the
    pixels, slowly: the second size catches it."""
    clock, size = [1000.0], {"pixels": 64 * 64}

    def quadratic(pixels: int) -> float:
        return 3.0 * (pixels / (64 * 64)) ** 2  # 3 s at 64x64: a slow first run

    def sized(request, **kwargs):
        size["pixels"] = request.width * request.height
        return GENERATE(request, **kwargs)

    def step(_step: int) -> None:
        clock[0] += quadratic(size["pixels"])

    settings = Settings(model_dir=tiny_model_dir, default_model="tiny", device="cpu",
                        lora_cache_dir=tmp_path_factory.mktemp("cache"),
                        deadline_seconds=DEADLINE)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(app_module, "generate", sized)
        patch.setattr(app_module, "warmup_request", WARMUP_REQUEST)  # its own native 64x64
        patch.setattr(app_module, "CPU_BIG_UNET_PARAMETERS", BIG_UNET)  # the tiny UNet: small
        engine = build_engine(settings)
        engine.clock, engine.step_hook = (lambda: clock[0]), step
        with TestClient(create_app(engine=engine)) as client:
            wait_ready(client)
    assert engine.speed is not None and engine.warmed_up is not None
    assert engine.warmed_up.seconds == pytest.approx(3.0)
    for side in (128, 512, 1024, 4096):
        assert engine.speed.step_seconds(side * side) >= quadratic(side * side) * (1 - 1e-9)
