"""The portal's ASGI application.

So far it serves only its health route, which the load balancer and the image build use; the
pages and the A1111-compatible API arrive with the portal issue.
"""

from __future__ import annotations

from fastapi import FastAPI

from easel_webui import __version__

app = FastAPI(title="Easel portal", version=__version__, docs_url=None, redoc_url=None)


@app.get("/health", include_in_schema=False)
def health() -> dict[str, str]:
    return {"status": "ok", "version": __version__}
