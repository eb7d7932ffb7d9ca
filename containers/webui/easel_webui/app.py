"""The portal's ASGI application: `create_app()` builds it; `app` is what uvicorn serves.

The AWS side is built on first use from the environment (see settings.py), so importing this
module never calls AWS and `/health` answers even before the settings are complete.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from easel_contracts.bodylimit import BodyLimit
from easel_webui import __version__
from easel_webui.access import check_routes_declared
from easel_webui.errors import install_error_handlers
from easel_webui.portal import Portal
from easel_webui.routes import (
    endpoints,
    generate,
    models,
    pages,
    pnginfo,
    sdapi,
    training,
    users,
)
from easel_webui.settings import Settings, load_settings
from easel_webui.storage import MAX_LORA_BYTES

MAX_BODY_BYTES = 64 * 1024 * 1024
# LoRA uploads stream through the portal (spooled to disk, then to S3).
LARGE_BODY_PATHS = {"/models/loras": MAX_LORA_BYTES + 1024 * 1024}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob: http: https:; "
        "connect-src 'self' http: https:; script-src 'self'; style-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
}
ROUTE_MODULES = (pages, users, models, endpoints, generate, pnginfo, training, sdapi)


class LazyPortal:
    """Builds the `Portal` on first use (from the environment unless given)."""

    def __init__(self, settings: Settings | None, clients: Any | None) -> None:
        self._settings = settings
        self._clients = clients
        self._portal: Portal | None = None
        self._lock = threading.Lock()

    def get(self) -> Portal:
        with self._lock:
            if self._portal is None:
                settings = self._settings or load_settings()
                self._portal = Portal.build(settings, self._clients)
            return self._portal

    def check_settings(self) -> Settings:
        """The settings, read from the environment if needed (no AWS call); `SettingsError`
        when they are incomplete."""
        return self._settings or load_settings()

    def close(self, timeout: float | None = None) -> list[str]:
        """Close the portal if it was built (see `Portal.close`); the generation jobs still
        running after the wait."""
        with self._lock:
            portal = self._portal
        return portal.close(timeout) if portal is not None else []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """On shutdown (uvicorn has answered its open requests), wait for the generation jobs this
    task runs, so a restart or scale-in does not drop their images."""
    yield
    await run_in_threadpool(app.state.portal.close)


def create_app(*, settings: Settings | None = None, clients: Any | None = None) -> FastAPI:
    app = FastAPI(title="Easel portal", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None, lifespan=lifespan)
    app.state.portal = LazyPortal(settings, clients)
    install_error_handlers(app)
    for module in ROUTE_MODULES:
        module.routes.install(app)
    check_routes_declared(app)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        for header, value in SECURITY_HEADERS.items():
            response.headers.setdefault(header, value)
        if request.url.path.startswith(("/static/", "/health")):
            return response
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    # Bodies are bounded while they stream in (a chunked body has no Content-Length to check).
    app.add_middleware(BodyLimit, limit_for=body_limit)
    return app


def body_limit(scope: dict[str, Any]) -> int:
    return LARGE_BODY_PATHS.get(scope.get("path", ""), MAX_BODY_BYTES)


app = create_app()
