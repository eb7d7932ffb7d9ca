"""The work cap applied by the portal before a job is recorded (``easel_contracts.workcap``).

The model server refuses a request that cannot finish by its deadline at the speed it timed at
warm-up; the portal reads that speed and deadline from the endpoint's ``options`` answer and
applies the same rule first, so such a request is a 422 saying what to lower before any job,
queue slot or invocation is spent. The answer is kept per endpoint for a few minutes; an endpoint
that gives no speed (still warming, or an older image) is checked by its server alone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from pydantic import BaseModel

from easel_contracts.invocations import GenerationRequest, Options
from easel_contracts.workcap import MeasuredSpeed, check_work
from easel_webui.errors import PortalError

SPEED_TTL_SECONDS = 300.0
# an endpoint whose options could not be read is asked again after this long
RETRY_SECONDS = 30.0


class WorkCap:
    def __init__(self, listing: Callable[[str, str], BaseModel], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._listing = listing
        self._clock = clock
        self._lock = threading.Lock()
        self._known: dict[str, tuple[float, MeasuredSpeed | None, float | None]] = {}

    def _speed(self, endpoint: str) -> tuple[MeasuredSpeed | None, float | None]:
        with self._lock:
            known = self._known.get(endpoint)
        if known is not None and known[0] > self._clock():
            return known[1], known[2]
        try:
            options = self._listing(endpoint, "options")
        except PortalError:
            options = None
        if isinstance(options, Options) and options.speed is not None \
                and options.deadline_seconds:
            entry = (self._clock() + SPEED_TTL_SECONDS, options.speed,
                     float(options.deadline_seconds))
        else:
            entry = (self._clock() + RETRY_SECONDS, None, None)
        with self._lock:
            self._known[endpoint] = entry
        return entry[1], entry[2]

    def check(self, endpoint: str, request: GenerationRequest) -> None:
        """Raise a 422 naming what to lower when `request` cannot finish by the endpoint's
        deadline even alone (the queue ahead is the server's to judge: 503 there)."""
        speed, deadline = self._speed(endpoint)
        if speed is None or deadline is None:
            return
        refusal = check_work(request, speed, deadline_s=deadline)
        if refusal is not None and refusal.error == "TooMuchWork":
            field = f"{refusal.field}: " if refusal.field else ""
            raise PortalError(f"{field}{refusal.detail}", status_code=422)
