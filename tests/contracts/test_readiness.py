"""Readiness states of the inference server: which transitions exist and what /ping answers."""

from __future__ import annotations

import pytest

from easel_contracts.readiness import BadTransition, check_transition, ping_status


@pytest.mark.parametrize("state", ["ready", "degraded"])
def test_ping_is_200_while_serving(state) -> None:
    assert ping_status(state) == 200


@pytest.mark.parametrize("state", ["loading", "warming", "failed"])
def test_ping_is_503_while_not_serving(state) -> None:
    assert ping_status(state) == 503


def test_the_start_goes_loading_warming_ready() -> None:
    check_transition("loading", "warming")
    check_transition("warming", "ready")


def test_degraded_comes_back_to_ready() -> None:
    check_transition("ready", "degraded")
    check_transition("degraded", "ready")


def test_failed_is_final() -> None:
    for state in ("loading", "warming", "ready", "degraded"):
        check_transition(state, "failed")
        with pytest.raises(BadTransition):
            check_transition("failed", state)


def test_a_server_that_is_still_loading_cannot_be_degraded() -> None:
    with pytest.raises(BadTransition):
        check_transition("loading", "degraded")


# --- a pool of workers (one per GPU)

def test_a_pool_is_ready_when_every_worker_serves() -> None:
    from easel_contracts.readiness import pool_state

    assert pool_state(["ready", "ready"]) == "ready"


def test_a_pool_with_one_worker_serving_is_degraded_and_still_serves() -> None:
    from easel_contracts.readiness import pool_state

    assert pool_state(["ready", "loading"]) == "degraded"
    assert ping_status(pool_state(["ready", "failed"])) == 200


def test_a_pool_with_no_worker_serving_is_not_ready() -> None:
    from easel_contracts.readiness import pool_state

    assert pool_state(["warming", "loading"]) == "warming"
    assert pool_state(["loading", "loading"]) == "loading"
    assert ping_status(pool_state(["loading", "failed"])) == 503


def test_a_pool_fails_only_when_every_worker_failed() -> None:
    from easel_contracts.readiness import pool_state

    assert pool_state(["failed", "failed"]) == "failed"
    assert pool_state(["failed", "loading"]) == "loading"


def test_warming_moves_on_to_its_next_size() -> None:
    check_transition("warming", "warming")
