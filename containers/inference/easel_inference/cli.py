"""``serve``: the SageMaker container entry point."""

from __future__ import annotations

import logging
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

    from .app import create_app

    # a bounded graceful shutdown: on SIGTERM, in-flight requests get 30 s, then the process exits
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, workers=1,
                log_level="info", access_log=False, timeout_graceful_shutdown=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
