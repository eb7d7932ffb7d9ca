"""GPU smoke run of the inference server as a plain process (`serve`), on a full-size model.

Builds a full-size SD1.5 architecture with random weights (single-file, original key layout,
no embedded configs and no YAML: loaded like a checkpoint downloaded from a model site), two
random LoRAs (A1111/kohya and diffusers key formats), starts `serve` with EASEL_MODEL_DIR
pointing at it, waits for /ping, then posts a 512x512 txt2img with both `<lora:...>` tags.
Prints the timings as JSON and writes them to $OUT/serve_smoke.json when OUT is set.

    python bench/serve_smoke.py                 # full-size, GPU machine
    python bench/serve_smoke.py --size tiny     # quick check of the script itself on a CPU

Needs the inference package importable (editable install, or PYTHONPATH=containers/inference;
then `python -m easel_inference.cli` stands in for the `serve` script) and its dependencies:
diffusers, transformers, accelerate, safetensors, fastapi, uvicorn, pydantic, pyyaml, scipy,
opencv-python-headless, httpx, and open_clip_torch installed with --no-deps (BPE vocabulary).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM if this script dies, so a killed run leaves no server."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _gpu_memory_mib(pid: int) -> int | None:
    """GPU memory the server process holds, from nvidia-smi (None without one)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        fields = [part.strip() for part in line.split(",")]
        if len(fields) == 2 and fields[0] == str(pid) and fields[1].isdigit():
            return int(fields[1])
    return None


def build_model(root: Path, *, size: str) -> dict[str, float]:
    from easel_inference.builder import build_pipeline, save_single_file
    from easel_inference.lora_builder import save_random_loras

    started = time.perf_counter()
    pipe = build_pipeline(arch="sd15", size=size, seed=0)
    built = time.perf_counter()
    for folder in ("Stable-diffusion", "Lora", "ControlNet", "VAE"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    save_single_file(
        pipe, root / "Stable-diffusion" / "sd15-random.safetensors",
        embed_configs=size == "tiny", write_yaml=size == "tiny",
    )
    save_random_loras(pipe, root / "Lora", seed=0)
    saved = time.perf_counter()
    return {"build_seconds": round(built - started, 3), "save_seconds": round(saved - built, 3)}


def post(url: str, payload: dict, *, timeout: float) -> tuple[float, dict]:
    started = time.perf_counter()
    response = httpx.post(f"{url}/invocations", json=payload, timeout=timeout)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"{payload['task']} answered {response.status_code}: {response.text}")
    return elapsed, response.json()


def run(args: argparse.Namespace) -> dict:
    serve = shutil.which("serve", path=str(Path(sys.executable).parent)) or shutil.which("serve")
    # without the console script (package on PYTHONPATH only) run the same entry point as -m
    command = [serve] if serve else [sys.executable, "-m", "easel_inference.cli"]
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="easel-serve-smoke-"))
    results: dict = {"size": args.size, "width": args.width, "height": args.height,
                     "sampler": args.sampler,
                     "steps": args.steps, "command": command}
    results.update(build_model(work / "model", size=args.size))
    port = _free_port()
    env = dict(os.environ, SAGEMAKER_BIND_TO_PORT=str(port), EASEL_HOST="127.0.0.1",
               EASEL_MODEL_DIR=str(work / "model"), EASEL_LORA_CACHE_DIR=str(work / "cache"),
               HF_HUB_OFFLINE="1")
    log_path = args.log_path = work / "serve.log"
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   preexec_fn=_die_with_parent)  # noqa: PLW1509
        try:
            listening = None
            while time.perf_counter() - started < args.ready_timeout:
                if process.poll() is not None:
                    raise RuntimeError(f"serve exited with {process.returncode}; see {log_path}")
                try:
                    status = httpx.get(f"{url}/ping", timeout=2).status_code
                except httpx.TransportError:
                    status = None
                if status is not None and listening is None:
                    listening = time.perf_counter() - started
                if status == 200:
                    break
                time.sleep(0.25)
            else:
                raise RuntimeError(f"/ping not ready after {args.ready_timeout}s; see {log_path}")
            results["listening_seconds"] = round(listening or 0.0, 3)
            results["ping_ready_seconds"] = round(time.perf_counter() - started, 3)
            _, options = post(url, {"task": "options", "payload": {}}, timeout=30)
            results["model_load_seconds"] = options.get("model_load_seconds")
            results["device"], results["dtype"] = options.get("device"), options.get("dtype")
            base = {"prompt": "a lighthouse on a cliff at dusk, oil painting",
                    "negative_prompt": "blurry", "width": args.width, "height": args.height,
                    "steps": args.steps, "cfg_scale": 7, "seed": 1234,
                    "sampler_name": args.sampler}
            with_loras = dict(base, prompt=base["prompt"]
                              + " <lora:style-kohya:0.8> <lora:detail-diffusers:0.6>")
            requests = [("no_lora", base), ("two_loras_first", with_loras),
                        ("two_loras_again", with_loras), ("no_lora_after", base)]
            digests = {}
            first_image = None
            for label, payload in requests:
                elapsed, body = post(url, {"task": "txt2img", "payload": payload},
                                     timeout=args.request_timeout)
                info = json.loads(body["info"])
                results[f"{label}_latency_seconds"] = round(elapsed, 3)
                results[f"{label}_generation_seconds"] = info["timings"]["generation_seconds"]
                results[f"{label}_images"] = len(body["images"])
                digests[label] = hashlib.sha256(base64.b64decode(body["images"][0])).hexdigest()
                first_image = first_image or body["images"][0]
            # facts read off the images, reported rather than asserted (the GPU is not
            # guaranteed bit-deterministic, and these are random weights)
            results["same_seed_same_image"] = (
                digests["two_loras_first"] == digests["two_loras_again"])
            results["loras_change_image"] = digests["no_lora"] != digests["two_loras_first"]
            results["lora_removal_restores_image"] = digests["no_lora"] == digests["no_lora_after"]
            img2img = dict(base, init_images=[first_image], denoising_strength=0.6)
            elapsed, body = post(url, {"task": "img2img", "payload": img2img},
                                 timeout=args.request_timeout)
            results["img2img_latency_seconds"] = round(elapsed, 3)
            bad = httpx.post(f"{url}/invocations", timeout=30, json={
                "task": "txt2img", "payload": dict(base, width=500)})
            results["bad_width_status"] = bad.status_code
            results["bad_width_detail"] = bad.json().get("detail")
            results["gpu_memory_mib"] = _gpu_memory_mib(process.pid)
            results["ok"] = True
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    results["log"] = str(log_path)
    return results


def main(argv: list[str] | None = None) -> int:
    import signal

    # SIGTERM (e.g. from `timeout`) unwinds through the finally blocks that stop the server
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler", default="DPM++ 2M Karras")
    parser.add_argument("--ready-timeout", type=float, default=900)
    parser.add_argument("--request-timeout", type=float, default=600)
    parser.add_argument("--work-dir", default=None)
    args = parser.parse_args(argv)
    try:
        results = run(args)
    except Exception as exc:  # report the failure in the same JSON shape
        results = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    text = json.dumps(results, indent=2)
    print(text)
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "serve_smoke.json").write_text(text + "\n")
        log = getattr(args, "log_path", None)
        if log is not None and log.is_file():
            shutil.copy(log, Path(out) / "serve.log")
    return 0 if results.get("ok") else 1


if __name__ == "__main__":
    raise SystemExit(main())
