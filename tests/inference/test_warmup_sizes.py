"""The warm-up covers every size the portal's form offers for the model's family, within the
start-up budget, while /ping says warming (a fake clock and a recording generate)."""

from __future__ import annotations

import pytest
from inference_fakes import FakeClock

from easel_contracts.form_sizes import offered_sizes
from easel_contracts.readiness import ping_status
from easel_inference import app as app_module
from easel_inference.app import build_engine, served_family
from easel_inference.settings import Settings


@pytest.fixture
def recorded(monkeypatch):
    """Each generate call's (width, height, steps) and the /ping status while it ran; each call
    takes 0.5 s + 0.1 s a step on the fake clock."""
    calls: list[tuple[int, int, int, int]] = []
    state: dict = {}

    def fake_generate(request, *, task, manager, library, settings, step_hook=None, **_):
        engine = state["engine"]
        calls.append((request.width, request.height, request.steps,
                      ping_status(engine.readiness.state)))
        engine.clock.now += 0.5 + 0.1 * request.steps

    monkeypatch.setattr(app_module, "generate", fake_generate)
    return calls, state


def _engine(tiny_model_dir, tmp_path, state, **overrides):
    clock = FakeClock()
    values = {"model_dir": tiny_model_dir, "default_model": "tiny",
              "lora_cache_dir": tmp_path / "cache", "warmup_sizes": "on"}
    values.update(overrides)
    engine = build_engine(Settings(**values))
    engine.clock = clock
    engine.started_at = clock.now
    state["engine"] = engine
    return engine


def test_each_offered_size_is_warmed_while_ping_is_not_ready(tiny_model_dir, tmp_path,
                                                              recorded) -> None:
    calls, state = recorded
    engine = _engine(tiny_model_dir, tmp_path, state)
    engine.start()
    model = engine.manager.get(None)
    sizes = offered_sizes(served_family(model.pipe))
    warmed = {(w, h) for w, h, steps, _ in calls if steps == app_module.SIZE_WARMUP_STEPS}
    assert warmed == set(sizes)
    assert all(status == 503 for *_, status in calls)
    assert engine.readiness.state == "ready"
    assert engine.warmed_sizes == list(sizes)


def test_sizes_that_would_end_past_the_startup_budget_are_left_and_the_server_turns_ready(
        tiny_model_dir, tmp_path, recorded) -> None:
    calls, state = recorded
    # the budget (60 s) minus the margin kept for /ping leaves no time for any extra size
    engine = _engine(tiny_model_dir, tmp_path, state, startup_budget_seconds=60)
    engine.start()
    assert not [c for c in calls if c[2] == app_module.SIZE_WARMUP_STEPS]
    assert engine.readiness.state == "ready"


def test_the_budget_runs_from_the_server_start(tiny_model_dir, tmp_path, recorded) -> None:
    calls, state = recorded
    engine = _engine(tiny_model_dir, tmp_path, state, startup_budget_seconds=600)
    engine.started_at -= 600 - app_module.STARTUP_MARGIN_S - 1  # the model load took it all
    engine.start()
    assert not [c for c in calls if c[2] == app_module.SIZE_WARMUP_STEPS]
    assert engine.readiness.state == "ready"


def test_without_the_fast_paths_compile_only_the_native_size_is_warmed(
        tiny_model_dir, tmp_path, recorded) -> None:
    calls, state = recorded
    engine = _engine(tiny_model_dir, tmp_path, state, warmup_sizes="auto")
    engine.start()
    assert not [c for c in calls if c[2] == app_module.SIZE_WARMUP_STEPS]
    assert calls  # the first-use and speed runs still ran


def test_settings_read_the_startup_budget_and_the_sizes_switch() -> None:
    settings = Settings.from_env({"EASEL_STARTUP_BUDGET_SECONDS": "900",
                                  "EASEL_WARMUP_SIZES": "off"})
    assert (settings.startup_budget_seconds, settings.warmup_sizes) == (900, "off")
