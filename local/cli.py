"""``python -m local up``: start the local AWS, print the environment, run until stopped."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

DEFAULT_STATE_DIR = Path(".local-state")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m local",
        description="Easel's local AWS: an AWS emulator plus a SageMaker stand-in.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the local AWS and run until Ctrl-C / SIGTERM")
    up.add_argument(
        "--state",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help=f"state folder, the truth kept across restarts (default: {DEFAULT_STATE_DIR})",
    )
    up.add_argument("--clean", action="store_true", help="start from an empty state")
    up.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="device for endpoint and training processes (EASEL_DEVICE)",
    )
    up.add_argument("--deployment-id", default=None, help="deployment id (default: from config)")
    up.add_argument(
        "--env-file",
        type=Path,
        default=None,
        help="also write the export lines to this file (to `source` it from another shell)",
    )
    return parser


def export_lines(env: dict[str, str]) -> list[str]:
    return [f"export {key}={shlex.quote(value)}" for key, value in sorted(env.items())]


def run_up(args: argparse.Namespace) -> int:
    from local.runtime import LocalAws

    stop = threading.Event()

    def request_stop(_signum: int, _frame: object) -> None:
        stop.set()

    previous = {
        signum: signal.signal(signum, request_stop) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    aws = LocalAws(
        args.state, clean=args.clean, device=args.device, deployment_id=args.deployment_id
    )
    try:
        aws.start()
        lines = export_lines(aws.env)
        print("\n".join(lines), flush=True)
        if args.env_file:
            args.env_file.write_text("\n".join(lines) + "\n")
            args.env_file.chmod(0o600)
        if aws.admin_password:
            # Printed once, when the secret is created; later it is in the admin secret.
            print(f"# admin password (shown once): {aws.admin_password}", flush=True)
        print(
            f"# local AWS running; state in {aws.state_dir}; Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        while not stop.wait(0.5):
            pass
        print("# stopping: saving state and ending every process...", file=sys.stderr, flush=True)
    finally:
        aws.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "up":
        return run_up(args)
    return 2
