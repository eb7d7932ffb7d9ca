"""``serve``: the SageMaker container entry point.

One process serves when the host has one GPU (or none); with several (``EASEL_WORKERS``, default
one per visible GPU) a front process serves the port and runs a worker process per GPU
(``easel_inference.workers``). A worker is this same entry point, told its Unix socket.
"""

from __future__ import annotations

import logging
import os
import sys

from .settings import Settings, SettingsError


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    from .workers import (
        WORKER_SOCKET_ENV,
        build_pool,
        create_pool_app,
        cuda_device_count,
        worker_count,
    )

    socket = os.environ.get(WORKER_SOCKET_ENV, "").strip()
    if socket:  # a worker of a front process: serve on its private socket
        from .app import create_app

        uvicorn.run(create_app(settings), uds=socket, workers=1, log_level="warning",
                    access_log=False, timeout_graceful_shutdown=30)
        return 0
    count = worker_count(settings, cuda_device_count)
    if count > 1:
        app = create_pool_app(settings, build_pool(settings, count))
    else:
        from .app import create_app

        app = create_app(settings)
    # a bounded graceful shutdown: on SIGTERM, in-flight requests get 30 s, then the process exits
    uvicorn.run(app, host=settings.host, port=settings.port, workers=1, log_level="info",
                access_log=False, timeout_graceful_shutdown=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
