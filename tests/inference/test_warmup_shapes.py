"""The shapes the server generates at start-up on a GPU. Serving the fast path's CUDA graphs,
each new latent shape is an Inductor compile (30-60 s for SD1.5 on an H100), so the speed's
second size is one the sizes warm-up compiles anyway, never a shape no request may use; eager
serving keeps timing half the native side.

The GPU is faked: the tiny model is loaded on the CPU, then the manager says "cuda" and the
model's fast-path report says what was applied; ``generate`` is recorded and advances a fake
clock by what a step costs at its size (a p + b p^2 seconds over p pixels, plus c p an image),
so the timed speed can be checked against the true cost.
"""

from __future__ import annotations

import pytest
from inference_fakes import FakeClock

from easel_contracts.readiness import ping_status
from easel_inference import app as app_module
from easel_inference.app import SIZE_WARMUP_STEPS, SPEED_RUNS, build_engine
from easel_inference.fastpath import FastPathReport
from easel_inference.settings import Settings

WARMUP_REQUEST = app_module.warmup_request
A, B, C = 1e-7, 1e-13, 1e-7  # seconds a pixel-step, a squared-pixel-step, a pixel-image
NATIVE = (512, 512)  # the model's native size here, as SD1.5's
HALF_SIDE = (256, 256)  # eager serving's second timed size for a 512x512 native size
FIRST_OFFERED_OTHER = (512, 768)  # SD1.x's form: 512x512, 512x768, 768x512


def true_step_seconds(pixels: int) -> float:
    return A * pixels + B * pixels * pixels


@pytest.fixture
def started(tiny_model_dir, tmp_path, monkeypatch):
    """start(**settings, graphs=bool) -> (engine, calls): each call's (width, height, steps,
    /ping status while it ran), in order."""
    calls: list[tuple[int, int, int, int]] = []

    def native_512(pipe, name, *, max_pixels):
        return WARMUP_REQUEST(pipe, name, max_pixels=max_pixels).model_copy(
            update={"width": NATIVE[0], "height": NATIVE[1]})

    def start(*, graphs: bool, **overrides):
        clock = FakeClock()
        values = {"model_dir": tiny_model_dir, "default_model": "tiny",
                  "lora_cache_dir": tmp_path / "cache", **overrides}
        engine = build_engine(Settings(**values))
        engine.clock, engine.started_at = clock, clock.now
        model = engine.manager.get(None)  # loaded on the CPU, before the manager says cuda
        applied = ["fuse_qkv", "channels_last"] + (["cuda_graphs"] if graphs else [])
        model.fast_path = FastPathReport(applied=applied)
        engine.manager.device = "cuda"

        def fake_generate(request, **_):
            pixels = request.width * request.height
            calls.append((request.width, request.height, request.steps,
                          ping_status(engine.readiness.state)))
            clock.now += request.steps * true_step_seconds(pixels) + C * pixels

        monkeypatch.setattr(app_module, "generate", fake_generate)
        monkeypatch.setattr(app_module, "warmup_request", native_512)
        engine.start()
        assert engine.readiness.state == "ready"
        return engine, calls

    return start


def shapes(calls) -> set[tuple[int, int]]:
    return {(width, height) for width, height, *_ in calls}


def test_on_the_fast_path_start_up_generates_only_the_offered_sizes(started) -> None:
    _engine, calls = started(graphs=True)
    assert shapes(calls) == {(512, 512), (512, 768), (768, 512)}  # no 256x256 compile


def test_on_the_fast_path_the_second_size_is_timed_after_its_compile_before_ready(
        started) -> None:
    engine, calls = started(graphs=True)
    sized = [(steps, status) for width, height, steps, status in calls
             if (width, height) == FIRST_OFFERED_OTHER]
    assert sized == [(SIZE_WARMUP_STEPS, 503), (SPEED_RUNS[1], 503)]
    assert calls[-1][:3] == (*FIRST_OFFERED_OTHER, SPEED_RUNS[1])
    assert engine.speed is not None


def test_on_the_fast_path_the_speed_counts_the_offered_sizes_growth(started) -> None:
    engine, _calls = started(graphs=True)
    pixels = FIRST_OFFERED_OTHER[0] * FIRST_OFFERED_OTHER[1]
    assert engine.speed.seconds_per_squared_pixel_step == pytest.approx(B, rel=1e-6)
    assert engine.speed.step_seconds(pixels) == pytest.approx(true_step_seconds(pixels))


def test_on_the_fast_path_with_sizes_off_no_second_size_is_timed(started) -> None:
    engine, calls = started(graphs=True, warmup_sizes="off")
    assert shapes(calls) == {NATIVE}
    # speed_from_runs without another size: linear in the pixels, attention under-counted
    assert engine.speed.seconds_per_squared_pixel_step == 0
    pixels = FIRST_OFFERED_OTHER[0] * FIRST_OFFERED_OTHER[1]
    assert engine.speed.step_seconds(pixels) < true_step_seconds(pixels)


def test_on_the_fast_path_a_size_left_for_the_budget_is_not_timed(started) -> None:
    # the budget (60 s) less the margin kept for /ping leaves no time for any other size
    engine, calls = started(graphs=True, startup_budget_seconds=60)
    assert shapes(calls) == {NATIVE}
    assert engine.speed.seconds_per_squared_pixel_step == 0


def test_eager_serving_on_a_gpu_still_times_half_the_native_side(started) -> None:
    engine, calls = started(graphs=False)
    assert (*HALF_SIDE, SPEED_RUNS[1], 503) in calls
    assert shapes(calls) == {NATIVE, HALF_SIDE}  # sizes are warmed only for the graphs
    assert engine.speed.seconds_per_squared_pixel_step == pytest.approx(B, rel=1e-6)
