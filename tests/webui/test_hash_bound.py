"""argon2 work is bounded: at most N hashes run at once per portal task; past the wait, 503."""

from __future__ import annotations

import threading
import time

import pytest

from easel_webui.errors import Busy
from easel_webui.hashing import BoundedHasher

from .conftest import login


def _slow_hasher(slots: int, wait: float) -> tuple[BoundedHasher, list[int]]:
    hasher = BoundedHasher(time_cost=1, memory_kib=1024, slots=slots, wait_seconds=wait)
    running = [0]
    peak = [0]
    lock = threading.Lock()
    inner = hasher._hasher

    class Slow:
        def verify(self, hashed: str, password: str) -> bool:
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.05)
            with lock:
                running[0] -= 1
            return inner.verify(hashed, password)

        def hash(self, password: str) -> str:
            return inner.hash(password)

    hashed = inner.hash("pw")
    hasher._hasher = Slow()  # type: ignore[assignment]
    hasher.hashed = hashed  # type: ignore[attr-defined]
    return hasher, peak


def test_no_more_than_the_bound_of_checks_run_at_once():
    hasher, peak = _slow_hasher(slots=2, wait=30)
    threads = [threading.Thread(target=hasher.verify, args=(hasher.hashed, "pw"))
               for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak[0] == 2


def test_a_check_that_cannot_get_a_slot_in_time_is_busy():
    hasher = BoundedHasher(time_cost=1, memory_kib=1024, slots=1, wait_seconds=0.05)
    hashed = hasher.hash("pw")
    hasher._slots.acquire()
    try:
        with pytest.raises(Busy) as raised:
            hasher.verify(hashed, "pw")
    finally:
        hasher._slots.release()
    assert raised.value.status_code == 503 and raised.value.retry_after


def test_sign_in_at_the_bound_answers_503_with_retry_after(world_factory):
    world = world_factory(EASEL_PASSWORD_HASH_CONCURRENCY="1",
                          EASEL_PASSWORD_HASH_WAIT_SECONDS="0")
    world.add_user("ivan")
    slots = world.portal.auth._hasher._slots
    slots.acquire()
    try:
        response = world.client().get("/sdapi/v1/sd-models", auth=("ivan", "user-password-123"))
        assert response.status_code == 503
        assert response.headers["Retry-After"].isdigit()
        assert "try again" in response.json()["detail"]
    finally:
        slots.release()
    assert login(world.client(), "ivan", "user-password-123").status_code == 303


def test_basic_clients_sharing_an_expired_credential_check_it_once(world, monkeypatch):
    """Thirty A1111 clients of one user, re-checking together once the one-minute cache expired,
    cost one argon2 check, not thirty (issue 15: 1.4 GB after the cache expiry)."""
    import easel_webui.auth as auth_module

    world.add_user("ivan")
    auth = world.portal.auth
    assert auth.authenticate_basic("ivan", "user-password-123").username == "ivan"
    later = auth_module.now() + auth_module.BASIC_CACHE_SECONDS + 1
    monkeypatch.setattr(auth_module, "now", lambda: later)
    inner = auth._hasher._hasher
    checks = []

    class Counting:
        def verify(self, hashed: str, password: str) -> bool:
            checks.append(password)
            time.sleep(0.2)  # the others arrive while this check runs
            return inner.verify(hashed, password)

        def hash(self, password: str) -> str:
            return inner.hash(password)

    auth._hasher._hasher = Counting()
    users = []
    threads = [threading.Thread(target=lambda: users.append(
        auth.authenticate_basic("ivan", "user-password-123"))) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [user.username for user in users] == ["ivan"] * 30
    assert len(checks) == 1


def test_a_wrong_password_is_not_served_from_a_right_ones_cache_entry(world):
    world.add_user("ivan")
    auth = world.portal.auth
    auth.authenticate_basic("ivan", "user-password-123")
    with pytest.raises(Exception) as raised:
        auth.authenticate_basic("ivan", "wrong-password-456")
    assert getattr(raised.value, "status_code", None) in (401, 429)
