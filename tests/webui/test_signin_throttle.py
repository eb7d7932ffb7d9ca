"""Sign-in throttling (issue 15): attempts are reserved in the table before the password check,
counted per (user, client address), back off, and never let a stranger lock a user out."""

from __future__ import annotations

import base64
import threading

import pytest

from easel_webui import auth as auth_module
from easel_webui.errors import PortalError, TooManyAttempts

from .conftest import login

RIGHT = "user-password-123"
WRONG = "wrong-password-x"


def _via_cloudfront(client, viewer: str, forged: str = "") -> None:
    """Headers as CloudFront and the ALB leave them: `<forged...>, <viewer>, <CloudFront>`."""
    entries = [e for e in (forged, viewer, "10.0.5.17") if e]
    client.headers["X-Forwarded-For"] = ", ".join(entries)


def _counting_checks(world, monkeypatch) -> list[str]:
    checked: list[str] = []
    real = world.portal.auth._verify

    def spy(name, password):
        checked.append(password)
        return real(name, password)

    monkeypatch.setattr(world.portal.auth, "_verify", spy)
    return checked


def _atomic_conditional_writes(world, monkeypatch) -> None:
    """DynamoDB applies a conditional PutItem atomically per item; moto's in-process backend
    checks and writes without a lock, so parallel threads can both pass the same condition.
    Serialise the writes so the test sees DynamoDB's guarantee, not moto's race."""
    client = world.portal.auth.table.client
    real = client.put_item
    lock = threading.Lock()

    def put_item(**kwargs):
        with lock:
            return real(**kwargs)

    monkeypatch.setattr(client, "put_item", put_item)


def test_parallel_wrong_passwords_are_not_all_checked(world_factory, monkeypatch):
    world = world_factory(EASEL_LOGIN_MAX_FAILURES="3")
    world.add_user("olga")
    checked = _counting_checks(world, monkeypatch)
    _atomic_conditional_writes(world, monkeypatch)
    outcomes: list[int] = []
    barrier = threading.Barrier(12)

    def attempt(password: str) -> None:
        barrier.wait()
        try:
            world.portal.auth.authenticate("olga", password, "198.51.100.7")
            outcomes.append(200)
        except PortalError as exc:
            outcomes.append(exc.status_code)

    threads = [threading.Thread(target=attempt, args=(WRONG,)) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(checked) <= 3
    assert outcomes.count(429) >= 9
    # and the right password from that address is refused now too
    with pytest.raises(TooManyAttempts):
        world.portal.auth.authenticate("olga", RIGHT, "198.51.100.7")


def test_a_strangers_failures_do_not_lock_the_user_out(world_factory):
    world = world_factory(EASEL_LOGIN_MAX_FAILURES="3")
    world.add_user("pete")
    stranger = world.client()
    _via_cloudfront(stranger, "203.0.113.66")
    for _ in range(3):
        assert login(stranger, "pete", WRONG).status_code == 401
    assert login(stranger, "pete", RIGHT).status_code == 429
    owner = world.client()
    _via_cloudfront(owner, "192.0.2.10")
    assert login(owner, "pete", RIGHT).status_code == 303


def test_forged_forwarded_entries_do_not_reset_the_count(world_factory):
    world = world_factory(EASEL_LOGIN_MAX_FAILURES="2")
    world.add_user("quin")
    client = world.client()
    for forged in ("1.1.1.1", "2.2.2.2"):
        _via_cloudfront(client, "203.0.113.66", forged=forged)
        assert login(client, "quin", WRONG).status_code == 401
    _via_cloudfront(client, "203.0.113.66", forged="3.3.3.3")
    assert login(client, "quin", RIGHT).status_code == 429


def test_the_http_basic_api_is_throttled_per_client_too(world_factory):
    world = world_factory(EASEL_LOGIN_MAX_FAILURES="2")
    world.add_user("rita")
    world.in_service()

    def basic(client, password):
        token = base64.b64encode(f"rita:{password}".encode()).decode()
        return client.get("/sdapi/v1/samplers", headers={"Authorization": f"Basic {token}"})

    attacker = world.client()
    _via_cloudfront(attacker, "203.0.113.66")
    for _ in range(2):
        assert basic(attacker, WRONG).status_code == 401
    refused = basic(attacker, RIGHT)
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) > 0
    owner = world.client()
    _via_cloudfront(owner, "192.0.2.10")
    assert basic(owner, RIGHT).status_code == 200


def test_the_wait_doubles_and_then_the_client_may_try_again(world_factory, monkeypatch):
    world = world_factory(EASEL_LOGIN_MAX_FAILURES="2", EASEL_LOGIN_BACKOFF_SECONDS="30")
    world.add_user("sven")
    clock = [1_000_000.0]
    monkeypatch.setattr(auth_module, "now", lambda: clock[0])
    auth = world.portal.auth
    for _ in range(2):
        with pytest.raises(PortalError) as wrong:
            auth.authenticate("sven", WRONG, "198.51.100.7")
        assert wrong.value.status_code == 401
    with pytest.raises(TooManyAttempts) as first_wait:
        auth.authenticate("sven", RIGHT, "198.51.100.7")
    assert first_wait.value.retry_after == 30
    clock[0] += 31
    with pytest.raises(PortalError):
        auth.authenticate("sven", WRONG, "198.51.100.7")  # the third failure
    with pytest.raises(TooManyAttempts) as second_wait:
        auth.authenticate("sven", RIGHT, "198.51.100.7")
    assert second_wait.value.retry_after == 60
    clock[0] += 61
    assert auth.authenticate("sven", RIGHT, "198.51.100.7").username == "sven"
