"""Entry point of the emulator subprocess: moto's server on 127.0.0.1 with a change counter.

Run as ``python -m local.emulator.server_main --port-file PATH``. It binds a free port,
writes it to the port file, and serves every moto service on it. Requests that may change
state bump a counter that ``GET /_easel/generation`` returns, so the parent process knows
when to snapshot the emulator's content to disk.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import unquote

GENERATION_PATH = "/_easel/generation"
_READ_ONLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_READ_ONLY_ACTION_PREFIXES = ("Get", "Describe", "List", "Query", "Scan", "BatchGet")
# Only these services' content is kept on disk; changes elsewhere need no snapshot.
PERSISTED_SERVICES = frozenset({"s3", "dynamodb", "secretsmanager"})
_CREDENTIAL_SCOPE = re.compile(r"Credential=[^/,&\s]+/\d{8}/[^/]+/([a-z0-9-]+)/aws4_request")


class ChangeCounter:
    """Counts requests that may have changed the emulator's state."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def bump(self) -> None:
        with self._lock:
            self.value += 1


def signed_service(environ: dict[str, Any]) -> str | None:
    """The service named in the request's SigV4 credential scope (header or presigned URL)."""
    for source in (environ.get("HTTP_AUTHORIZATION", ""), unquote(environ.get("QUERY_STRING", ""))):
        match = _CREDENTIAL_SCOPE.search(source)
        if match:
            return match.group(1)
    return None


def request_may_change_state(environ: dict[str, Any]) -> bool:
    """True unless the request is clearly a read, or goes to a service not kept on disk.

    Unsigned requests (e.g. a browser's presigned POST upload) count as changes.
    """
    if environ.get("REQUEST_METHOD", "GET").upper() in _READ_ONLY_METHODS:
        return False
    service = signed_service(environ)
    if service is not None and service not in PERSISTED_SERVICES:
        return False
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    action = target.rsplit(".", 1)[-1]
    return not (action and action.startswith(_READ_ONLY_ACTION_PREFIXES))


def with_change_counter(app: Any, counter: ChangeCounter) -> Any:
    """Wrap a WSGI app: answer the generation path, count state-changing requests."""

    def wrapped(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") == GENERATION_PATH:
            body = json.dumps({"generation": counter.value}).encode()
            start_response(
                "200 OK",
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
            return [body]
        if request_may_change_state(environ):
            # Bump before and after: a snapshot that starts mid-request sees a new value later.
            counter.bump()
            try:
                return app(environ, start_response)
            finally:
                counter.bump()
        return app(environ, start_response)

    return wrapped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port-file", required=True, type=Path)
    parser.add_argument("--blob-dir", type=Path, default=None,
                        help="where large S3 bodies are kept as files (default: none)")
    args = parser.parse_args(argv)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    os.environ["MOTO_PORT"] = str(port)  # moto builds some URLs from it

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    from local.emulator.post_policy import with_post_policy

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app: Any = DomainDispatcherApplication(create_backend_app)
    if args.blob_dir is not None:
        from local.emulator.fastpath import FastPath

        app = FastPath(app, args.blob_dir)
    app = with_change_counter(with_post_policy(app), ChangeCounter())
    server = make_server(
        "127.0.0.1",
        port,
        app,
        threaded=True,
        request_handler=MotoRequestHandler,
        fd=sock.fileno(),
    )

    def stop(_signum: int, _frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    tmp = args.port_file.with_suffix(".tmp")
    tmp.write_text(str(port))
    tmp.replace(args.port_file)
    print(f"emulator listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever(poll_interval=0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
