"""Password hashing with a bound on how many argon2 computations run at once.

Each argon2 hash or check takes ``memory_kib`` of memory (64 MiB by default) for its duration.
Without a bound, a burst of sign-ins (or of HTTP Basic clients re-checking together) takes the
portal past its task's memory. ``BoundedHasher`` lets at most ``slots`` run together; a caller
waits up to ``wait_seconds`` for a slot and is then answered 503 with Retry-After (``Busy``), so
memory stays at about ``slots * memory_kib`` whatever the load. The bound is per portal task,
which is what it protects: each task has its own memory.
"""

from __future__ import annotations

import threading

from argon2 import PasswordHasher

from easel_webui.errors import Busy

BUSY_MESSAGE = ("The portal is busy checking other sign-ins; try again in a few seconds.")


class BoundedHasher:
    def __init__(self, *, time_cost: int, memory_kib: int, slots: int,
                 wait_seconds: float) -> None:
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib)
        self._slots = threading.BoundedSemaphore(slots)
        self._wait = wait_seconds
        self.slots = slots

    def _acquire(self) -> None:
        if not self._slots.acquire(timeout=self._wait):
            raise Busy(BUSY_MESSAGE)

    def hash(self, password: str) -> str:
        self._acquire()
        try:
            return self._hasher.hash(password)
        finally:
            self._slots.release()

    def verify(self, hashed: str, password: str) -> bool:
        """argon2's verify: True, or raises its VerificationError/InvalidHashError."""
        self._acquire()
        try:
            return self._hasher.verify(hashed, password)
        finally:
            self._slots.release()
