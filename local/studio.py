"""`make local`: all of Easel on this machine — the local AWS plus the portal, unchanged.

Starts the AWS emulator and the SageMaker stand-in (`local.runtime.LocalAws`), seeds a demo model
(a tiny random-weight pipeline packed as `models/demo/model.tar.gz`) and a demo concept set,
optionally uploads the user's own model (`--model PATH`, through the same code as
`scripts/upload_model`) and deploys it as the first endpoint, starts the portal pointed at it,
and prints the URL, the admin password and how to stop. Ctrl-C (or SIGTERM) stops every process
it started. State survives a restart unless `--clean`.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from local.processes import ProcessRegistry

DEFAULT_STATE_DIR = Path(".local-state")
DEMO_MODEL_KEY = "models/demo/model.tar.gz"
DEMO_CONCEPTS_PREFIX = "concepts/admin/demo/"
PORTAL_READY_TIMEOUT = 120.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m local.studio",
        description="Run all of Easel on this machine: local AWS + portal (make local).",
    )
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE_DIR,
                        help=f"state folder kept across restarts (default {DEFAULT_STATE_DIR})")
    parser.add_argument("--clean", action="store_true",
                        help="start from an empty state (a new admin password is generated)")
    parser.add_argument("--model", type=Path, default=None,
                        help="your own model (checkpoint file, diffusers folder or A1111 models "
                        "folder): uploaded and deployed as the first endpoint")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where endpoints and training jobs run (default: cuda if available)")
    parser.add_argument("--host", default="127.0.0.1", help="portal address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000,
                        help="portal port (default 8000; 0 picks a free one)")
    parser.add_argument("--stage", default="default", help="config stage (config/<stage>.yaml)")
    return parser


def pick_device(choice: str) -> str:
    if choice != "auto":
        return choice
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# Optional back-ends that the model libraries mention at import (transformers without
# torchvision, bitsandbytes' CPU kernels); nothing a local user can or needs to act on.
QUIET_LOGGERS = ("bitsandbytes", "transformers")


def quiet_library_warnings() -> None:
    """Keep the model libraries' import-time warnings off the `make local` terminal (the
    inference server and training job log to their own files, unchanged)."""
    import logging

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:
        return
    # transformers sets its own level when it first logs; this keeps it at errors
    transformers_logging.set_verbosity_error()


def _exists(s3: Any, bucket: str, key: str) -> bool:
    return bool(s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1).get("KeyCount"))


def seed_demo_model(s3: Any, bucket: str) -> bool:
    """Pack the tiny random-weight demo pipeline as models/demo/model.tar.gz (once)."""
    if _exists(s3, bucket, DEMO_MODEL_KEY):
        return False
    from easel_inference.builder import build_model_dir
    from scripts.upload_model import main as upload_model

    say("seeding the demo model (tiny random weights: it generates noise, quickly)...")
    with tempfile.TemporaryDirectory(prefix="easel-demo-") as tmp:
        root = build_model_dir(Path(tmp) / "demo", name="demo", fmt="single_file",
                               with_lora=True, with_controlnet=True)
        code = upload_model([str(root), "--name", "demo", "--bucket", bucket, "--quiet",
                             "--state-dir", str(Path(tmp) / "upload-state")])
    if code != 0:
        raise RuntimeError("could not upload the demo model")
    return True


def demo_images(count: int = 6, size: int = 64) -> list[tuple[str, bytes, str]]:
    """A few small, distinct pictures with captions: a concept set to train on."""
    import io

    from PIL import Image, ImageDraw

    images = []
    for index in range(count):
        image = Image.new("RGB", (size, size), (30 + 35 * index, 90, 200 - 25 * index))
        draw = ImageDraw.Draw(image)
        inset = 8 + 3 * index
        draw.ellipse((inset, inset, size - inset, size - inset), fill=(240, 200, 40))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        images.append((f"demo-{index}", buffer.getvalue(), f"a photo of sks toy, variant {index}"))
    return images


def seed_demo_concepts(s3: Any, bucket: str) -> bool:
    if _exists(s3, bucket, DEMO_CONCEPTS_PREFIX):
        return False
    for stem, png, caption in demo_images():
        s3.put_object(Bucket=bucket, Key=f"{DEMO_CONCEPTS_PREFIX}{stem}.png", Body=png,
                      ContentType="image/png")
        s3.put_object(Bucket=bucket, Key=f"{DEMO_CONCEPTS_PREFIX}{stem}.txt",
                      Body=caption.encode(), ContentType="text/plain")
    return True


def upload_and_deploy(model: Path, env: dict[str, str], s3: Any) -> str:
    """Upload the user's model like scripts/upload_model, then deploy it as the first endpoint.

    Locally the files go uncompressed to `models/<name>/` (`--uncompressed`): nothing to pack
    here, nothing to unpack at the endpoint, and the bytes move at disk speed.
    """
    from easel_webui.portal import Portal
    from easel_webui.settings import load_settings
    from scripts.layout import default_name
    from scripts.upload_model import main as upload_model

    name = default_name(model)
    prefix = f"models/{name}/"
    s3_uri = f"s3://{env['EASEL_BUCKET']}/{prefix}"
    held = s3.list_objects_v2(Bucket=env["EASEL_BUCKET"], Prefix=prefix, MaxKeys=2)
    held_keys = [item["Key"] for item in held.get("Contents", [])]
    if held_keys == [f"{prefix}model.tar.gz"]:
        s3_uri += "model.tar.gz"  # uploaded packed by an earlier version: deploy the archive
    if held_keys:
        say(f"{s3_uri} is already uploaded: deploying it as it is (--clean starts over)")
    else:
        started = time.monotonic()
        if upload_model([str(model), "--name", name, "--bucket", env["EASEL_BUCKET"],
                         "--uncompressed"]) != 0:
            raise RuntimeError(f"could not upload {model}")
        say(f"uploaded {model} in {time.monotonic() - started:.1f} s")
    portal = Portal.build(load_settings(env))
    existing = {record.get("name") for record in portal.endpoints.records()}
    endpoint = f"{name[:24]}-local".lower()
    if endpoint in existing:
        return endpoint
    instance_type = next(iter(portal.settings.endpoint_instance_types))
    spec = portal.endpoints.spec_from_form(
        {"name": endpoint, "model_s3_uri": s3_uri, "instance_type": instance_type,
         "mode": "realtime", "min_instances": "1", "max_instances": "1", "idle_ttl_hours": "0"},
        creator="admin",
    )
    portal.endpoints.deploy(spec)
    return endpoint


def portal_environment(aws_env: dict[str, str], stage: str) -> dict[str, str]:
    # stacks.config is plain pydantic: no CDK (and no jsii Node process) in local mode.
    from stacks.config import load_config, portal_settings_json

    return {
        **os.environ,
        **aws_env,
        "EASEL_PORTAL_CONFIG": portal_settings_json(load_config(stage)),
        "EASEL_SECURE_COOKIES": "false",  # plain http on this machine
        "EASEL_LOCAL_MODE": "true",  # the pages point at this terminal for the admin password
        # no CloudFront or ALB in front: the client is the connection's peer, never a header
        "EASEL_FORWARDED_HOPS": "0",
        "PYTHONUNBUFFERED": "1",
    }


def studio_registry(state: Path | str) -> ProcessRegistry:
    """The studio's own children (the portal), listed so a start after a SIGKILL ends them."""
    return ProcessRegistry(Path(state).expanduser().resolve() / "run" / "studio.json")


def end_orphans(state: Path | str) -> list[int]:
    """End what a killed studio left running: its portal, then the local AWS's processes.

    Each listed pid is ended only while it has the recorded start time and command line.
    """
    root = Path(state).expanduser().resolve()
    lock = root / ".lock"
    if not lock.exists():
        return studio_registry(root).end_leftovers()
    with lock.open("a") as handle:
        try:  # a live studio holds this lock: its processes are not orphans
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return []
        try:
            ended = studio_registry(root).end_leftovers()
            ended += ProcessRegistry(root / "run" / "processes.json").end_leftovers()
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    return ended


def start_portal(env: dict[str, str], host: str, port: int, log_path: Path,
                 registry: ProcessRegistry | None = None) -> subprocess.Popen:
    log = log_path.open("ab")
    command = [sys.executable, "-m", "easel_webui", "--host", host, "--port", str(port)]
    process = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    if registry is not None:
        registry.add(process.pid, command)
    deadline = time.monotonic() + PORTAL_READY_TIMEOUT
    url = f"http://{host}:{port}/health"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the portal exited with {process.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
                if response.status == 200:
                    return process
        except OSError:
            time.sleep(0.3)
    stop_process(process)
    raise RuntimeError(f"the portal did not answer {url} within {PORTAL_READY_TIMEOUT:.0f} s")


def stop_process(process: subprocess.Popen, grace: float = 10.0) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def admin_password(secrets: Any, secret_id: str) -> str:
    value = secrets.get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")["SecretString"]
    try:
        return json.loads(value)["password"]
    except (ValueError, KeyError, TypeError):
        return value


def run(args: argparse.Namespace, *, ready: threading.Event | None = None,
        stop: threading.Event | None = None) -> int:
    from local.runtime import LocalAws

    stop = stop or threading.Event()
    if Path(args.state).expanduser().is_dir():
        ended = end_orphans(args.state)
        if ended:
            say(f"ended {len(ended)} processes a previous run left behind (pids {ended})")
    if args.port and port_in_use(args.host, args.port):
        say(f"port {args.port} is in use: stop what runs there or use `make local PORT=...`")
        return 1
    if args.model is not None and not args.model.exists():
        say(f"--model {args.model}: no such file or folder")
        return 2
    device = pick_device(args.device)
    quiet_library_warnings()
    say(f"starting the local AWS (state in {args.state}, device {device})...")
    with LocalAws(args.state, clean=args.clean, device=device) as aws:
        env = dict(aws.env)
        os.environ.update(env)  # scripts.upload_model reads EASEL_BUCKET and the endpoints
        s3 = aws.client("s3")
        seed_demo_model(s3, env["EASEL_BUCKET"])
        seed_demo_concepts(s3, env["EASEL_BUCKET"])
        first_endpoint = upload_and_deploy(args.model, env, s3) if args.model else None
        port = args.port or free_port(args.host)
        log_path = Path(args.state) / "portal.log"
        say("starting the portal...")
        registry = studio_registry(args.state)
        portal = start_portal(portal_environment(env, args.stage), args.host, port, log_path,
                              registry)
        try:
            password = admin_password(aws.client("secretsmanager"), env["EASEL_ADMIN_SECRET"])
            print(
                "\nEasel is running on this machine.\n"
                f"  portal:   http://{args.host}:{port}/\n"
                "  user:     admin\n"
                f"  password: {password}\n"
                + (f"  endpoint: {first_endpoint} (your model, starting)\n" if first_endpoint
                   else "  demo model: s3://{}/{} (deploy it from Endpoints)\n".format(
                       env["EASEL_BUCKET"], DEMO_MODEL_KEY))
                + f"  logs:     {log_path} and {args.state}/\n"
                "Press Ctrl-C to stop everything (state is kept; --clean starts over).",
                flush=True,
            )
            if ready is not None:
                ready.set()
            while not stop.wait(0.5):
                if portal.poll() is not None:
                    say(f"the portal exited with {portal.returncode}; see {log_path}")
                    return 1
        finally:
            say("stopping...")
            stop_process(portal)
            registry.remove(portal.pid)
    say("stopped; nothing left running.")
    return 0


def show_progress() -> None:
    """The local AWS's progress lines (endpoint download, unpack, load) on the terminal."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("local")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    show_progress()
    stop = threading.Event()

    def request_stop(_signum: int, _frame: object) -> None:
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, request_stop)
    try:
        return run(args, stop=stop)
    except RuntimeError as error:
        say(f"error: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
