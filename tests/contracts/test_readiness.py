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
