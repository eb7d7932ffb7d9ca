"""`python -m easel_webui` / `easel-webui`: serve the portal with uvicorn."""

from __future__ import annotations

import argparse
import os


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Run the Easel portal")
    parser.add_argument("--host", default=os.environ.get("EASEL_WEBUI_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("EASEL_WEBUI_PORT", "8000")))
    args = parser.parse_args()
    uvicorn.run("easel_webui.app:app", host=args.host, port=args.port, proxy_headers=True)


if __name__ == "__main__":
    main()
