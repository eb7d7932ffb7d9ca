"""Multi-GPU run (issue 19): data-parallel training and one serving worker per GPU, one command.

    python bench/multi_gpu.py                # N-GPU machine: N = every visible GPU
    python bench/multi_gpu.py --smoke        # CPU check: tiny model, 2 processes, gloo

(a) Training: the training job's entry point (`train`) on the full-size SD1.5 architecture with
    random weights and bench/training.py's synthetic concepts, LoRA, the same settings twice: one
    process per GPU (EASEL_NUM_PROCESSES=N), then CUDA_VISIBLE_DEVICES=0. The per-GPU batch is
    held constant. Throughput is the job's own training_report.json figure (images/s of the
    training loop); also each rank's share and whether the LoRA has the single-GPU layout.
(b) Serving: the inference server (`serve`) with EASEL_WORKERS=N, then 1, under the same
    concurrent txt2img load: images/s, and requests that did not answer 200 (lost). A server
    that does not report a worker pool in /ping's body does not support EASEL_WORKERS; the
    script says so and skips the pool figures.
(c) One worker of the pool is SIGKILLed mid-load: /ping's answers (status, workers ready) from
    then on, and the requests lost.

Prints one JSON object and a table (with the machine and this command) and writes
$OUT/multi_gpu.json when OUT is set. Needs the training and inference packages importable
(console scripts installed, or PYTHONPATH=containers/contracts:containers/inference:
containers/training, in which case `python -m` stands in for the scripts).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from training import write_concepts

RESULTS: dict[str, object] = {}


def _die_with_parent() -> None:
    """Linux: a child gets SIGTERM if this script dies, so a killed run leaves no server."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _script(name: str, module: str) -> list[str]:
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", module]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def machine() -> dict[str, object]:
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    return {"host": platform.node(), "cpus": os.cpu_count(), "gpus": gpus,
            "torch": torch.__version__, "python": platform.python_version()}


# ---- (a) training ------------------------------------------------------------------------------
def train_once(work: Path, label: str, *, settings: dict[str, str], env: dict[str, str],
               timeout: float) -> dict[str, object]:
    root = work / label
    (root / "input" / "config").mkdir(parents=True)
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(settings))
    (root / "input" / "data").mkdir(parents=True)
    for channel in ("concepts", "model"):
        (root / "input" / "data" / channel).symlink_to(work / channel, target_is_directory=True)
    started = time.perf_counter()
    done = subprocess.run(_script("train", "easel_training"), env={**env,
                          "EASEL_OPT_ML": str(root)}, capture_output=True, text=True,
                          timeout=timeout, check=False, preexec_fn=_die_with_parent)  # noqa: PLW1509
    wall = time.perf_counter() - started
    if done.returncode != 0:
        failure = root / "output" / "failure"
        reason = failure.read_text().strip() if failure.is_file() else done.stdout[-1500:]
        return {"ok": False, "exit_code": done.returncode, "error": reason}
    model = root / "model"
    report = json.loads((model / "training_report.json").read_text())
    files = sorted(p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file())
    return {"ok": True, "wall_seconds": round(wall, 2), "world_size": report["world_size"],
            "device": report["device"], "images_per_second": report["images_per_second"],
            "training_seconds": report["training_seconds"], "ranks": report.get("ranks", []),
            "files": files, "lora": str(model / report["result"])}


def served_lora_effect(lora: Path, base: Path, resolution: int) -> float:
    """Load the data-parallel LoRA the way the inference server does for `<lora:name:1>` (fused
    into a fresh base pipeline) and return the largest pixel change it makes (0..1)."""
    import numpy as np
    import torch

    from easel_inference.loader import load_pipeline
    from easel_inference.lora import LoraFuser, LoraLibrary, LoraUse

    pipe = load_pipeline(base).to("cuda" if torch.cuda.is_available() else "cpu")
    pipe.set_progress_bar_config(disable=True)

    def image() -> np.ndarray:
        return pipe("a photo of sks toy", num_inference_steps=2, height=resolution,
                    width=resolution, generator=torch.Generator().manual_seed(3),
                    output_type="np").images[0]

    before = image()
    LoraFuser(pipe).apply([LoraUse(name=lora.stem, text_weight=1.0, unet_weight=1.0)],
                          LoraLibrary(lora.parent))
    return float(np.abs(image() - before).max())


def bench_training(work: Path, args: argparse.Namespace, gpus: int) -> None:
    import torch

    resolution = 32 if args.smoke else 512
    write_concepts(work / "concepts", 20, resolution)
    settings = {"instance_prompt": "a photo of sks toy", "rank": "4", "alpha": "4",
                "resolution": str(resolution), "max_train_steps": str(args.train_steps),
                "train_batch_size": str(args.batch), "validation_steps": "0",
                "checkpointing_steps": "0", "mixed_precision": "auto"}
    RESULTS["training_settings"] = settings
    base_env = dict(os.environ, HF_HUB_OFFLINE="1")
    if args.smoke:
        base_env.update(EASEL_DEVICE="cpu", OMP_NUM_THREADS="1")
    multi_env = dict(base_env, EASEL_NUM_PROCESSES=str(gpus))
    single_env = dict(base_env, EASEL_NUM_PROCESSES="1")
    if torch.cuda.is_available():
        single_env["CUDA_VISIBLE_DEVICES"] = "0"
    multi = train_once(work, f"train-{gpus}", settings=settings, env=multi_env,
                       timeout=args.timeout)
    single = train_once(work, "train-1", settings=settings, env=single_env,
                        timeout=args.timeout)
    RESULTS["training_multi"], RESULTS["training_single"] = multi, single
    for label, run in (("multi", multi), ("single", single)):
        if not run.get("ok"):
            RESULTS[f"training_{label}_error"] = run.get("error")
    if multi.get("ok") and single.get("ok"):
        RESULTS["training_speedup"] = round(
            multi["images_per_second"] / single["images_per_second"], 3)
        RESULTS["training_every_rank_trained"] = len(multi["ranks"]) == gpus and all(
            share["steps"] == args.train_steps and share["samples"] > 0
            for share in multi["ranks"])
        RESULTS["training_single_gpu_layout"] = multi["files"] == single["files"]
        base = work / "model" / "Stable-diffusion" / "bench-sd15.safetensors"
        RESULTS["training_lora_served_max_pixel_change"] = served_lora_effect(
            Path(multi["lora"]), base, resolution)


# ---- (b) and (c) serving -----------------------------------------------------------------------
class Server:
    def __init__(self, work: Path, *, workers: int, args: argparse.Namespace) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, SAGEMAKER_BIND_TO_PORT=str(self.port), EASEL_HOST="127.0.0.1",
                   EASEL_MODEL_DIR=str(work / "model"), EASEL_WORKERS=str(workers),
                   EASEL_LORA_CACHE_DIR=str(work / "lora-cache"), HF_HUB_OFFLINE="1")
        if args.smoke:
            env.update(OMP_NUM_THREADS="1", EASEL_FAST_GRAPHS="0", EASEL_FAST_VAE="0")
        self.log = work / f"serve-{workers}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                _script("serve", "easel_inference.cli"), env=env, stdout=log,
                stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)  # noqa: PLW1509

    def ping(self) -> tuple[int | None, dict]:
        try:
            response = httpx.get(f"{self.url}/ping", timeout=5)
        except httpx.TransportError:
            return None, {}
        try:
            body = response.json()
        except ValueError:
            body = {}
        return response.status_code, body if isinstance(body, dict) else {}

    def wait_ready(self, timeout: float, *, all_workers: bool) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log.read_text(errors="replace")[-1500:]
                raise RuntimeError(f"serve exited with {self.process.returncode}: {tail}")
            status, body = self.ping()
            if status == 200 and (not all_workers or body.get("workers") is None
                                  or body.get("workers_ready") == body.get("workers")):
                return body
            time.sleep(0.25)
        tail = self.log.read_text(errors="replace")[-1500:]
        raise RuntimeError(f"/ping not ready after {timeout:.0f}s: {tail}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def load(url: str, *, requests: int, concurrency: int, payload: dict,
         timeout: float) -> dict[str, object]:
    """``requests`` txt2img calls, ``concurrency`` at a time; a non-200 is a lost request."""
    def one(_: int) -> int | str:
        try:
            return httpx.post(f"{url}/invocations", json={"task": "txt2img", "payload": payload},
                              timeout=timeout).status_code
        except httpx.HTTPError as exc:
            return type(exc).__name__

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - started
    ok = sum(answer == 200 for answer in answers)
    lost = sorted({str(a) for a in answers if a != 200})
    return {"requests": requests, "concurrency": concurrency, "ok": ok,
            "lost": requests - ok, "lost_answers": lost, "seconds": round(wall, 2),
            "images_per_second": round(ok * payload.get("batch_size", 1) / wall, 3)}


def _pool_workers(server: Server) -> list[int]:
    import psutil

    return [child.pid for child in psutil.Process(server.process.pid).children(recursive=True)
            if "easel_inference" in " ".join(child.cmdline())]


def bench_serving(work: Path, args: argparse.Namespace, gpus: int) -> None:
    resolution = 64 if args.smoke else 512
    payload = {"prompt": "a lighthouse on a cliff at dusk, oil painting", "width": resolution,
               "height": resolution, "steps": args.serve_steps, "cfg_scale": 7, "seed": 1,
               "sampler_name": "Euler a"}
    concurrency = args.concurrency or 2 * gpus
    runs: dict[str, dict] = {}
    for workers in (gpus, 1):
        server = Server(work, workers=workers, args=args)
        try:
            body = server.wait_ready(args.ready_timeout, all_workers=True)
            RESULTS[f"serving_ping_body_{workers}"] = body
            if workers > 1 and body.get("workers") != workers:
                RESULTS["serving_pool_unsupported"] = (
                    f"/ping reports no pool of {workers} workers ({body}): this inference "
                    "server does not support EASEL_WORKERS yet (one worker per GPU); pool "
                    "figures skipped")
                continue
            load(server.url, requests=concurrency, concurrency=concurrency, payload=payload,
                 timeout=args.request_timeout)  # warm-up
            runs[str(workers)] = load(server.url, requests=args.requests,
                                      concurrency=concurrency, payload=payload,
                                      timeout=args.request_timeout)
            if workers > 1 and not args.no_kill:
                RESULTS["serving_kill"] = kill_one_worker(server, args=args, payload=payload,
                                                          concurrency=concurrency)
        finally:
            server.stop()
    RESULTS["serving"] = runs
    if str(gpus) in runs and "1" in runs and runs["1"]["images_per_second"]:
        RESULTS["serving_speedup"] = round(
            runs[str(gpus)]["images_per_second"] / runs["1"]["images_per_second"], 3)


def kill_one_worker(server: Server, *, args: argparse.Namespace, payload: dict,
                    concurrency: int) -> dict[str, object]:
    """SIGKILL one pool worker while the load runs; /ping's answers every 0.25 s from then."""
    outcome: dict[str, object] = {}
    loader = threading.Thread(target=lambda: outcome.update(load(
        server.url, requests=args.requests, concurrency=concurrency, payload=payload,
        timeout=args.request_timeout)))
    loader.start()
    time.sleep(args.kill_after)
    workers = _pool_workers(server)
    if not workers:
        loader.join()
        return {"error": "no worker process found under the server", "load": outcome}
    victim = workers[-1]
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    answers: list[dict] = []
    last = None
    recovered = None
    while loader.is_alive() or (recovered is None
                                and time.monotonic() - killed < args.watch_seconds):
        status, body = server.ping()
        answer = {"status": status, "workers_ready": body.get("workers_ready"),
                  "state": body.get("status")}
        if answer != last:  # the changes only, with when they were seen
            answers.append({"t": round(time.monotonic() - killed, 2), **answer})
            last = answer
        if recovered is None and len(answers) > 1 and body.get("workers") is not None \
                and body.get("workers_ready") == body.get("workers"):
            recovered = round(time.monotonic() - killed, 2)
        if time.monotonic() - killed > args.watch_seconds + args.request_timeout:
            break
        time.sleep(0.25)
    loader.join()
    return {"killed_pid": victim, "ping_answers": answers, "load": outcome,
            "all_workers_ready_again_after_s": recovered}


# ---- report ------------------------------------------------------------------------------------
def table() -> str:
    rows = [("machine", json.dumps(RESULTS.get("machine"))),
            ("command", RESULTS.get("command", ""))]
    multi, single = RESULTS.get("training_multi") or {}, RESULTS.get("training_single") or {}
    if multi or single:
        rows += [(f"training {multi.get('world_size', '?')} processes, images/s",
                  multi.get("images_per_second", multi.get("error"))),
                 ("training 1 process, images/s", single.get("images_per_second",
                                                            single.get("error"))),
                 ("training speed-up", RESULTS.get("training_speedup")),
                 ("every rank trained", RESULTS.get("training_every_rank_trained")),
                 ("single-GPU layout", RESULTS.get("training_single_gpu_layout")),
                 ("served LoRA: largest pixel change",
                  RESULTS.get("training_lora_served_max_pixel_change"))]
    for workers, run in (RESULTS.get("serving") or {}).items():
        rows.append((f"serving {workers} worker(s), images/s (lost)",
                     f"{run['images_per_second']} ({run['lost']})"))
    if "serving_speedup" in RESULTS:
        rows.append(("serving speed-up", RESULTS["serving_speedup"]))
    if "serving_pool_unsupported" in RESULTS:
        rows.append(("serving pool", RESULTS["serving_pool_unsupported"]))
    kill = RESULTS.get("serving_kill")
    if kill:
        rows.append(("worker killed: /ping answers", json.dumps(kill.get("ping_answers"))))
        rows.append(("worker killed: requests lost", (kill.get("load") or {}).get("lost")))
        rows.append(("worker killed: all ready again after s",
                     kill.get("all_workers_ready_again_after_s")))
    width = max(len(str(name)) for name, _ in rows)
    return "\n".join(f"{name!s:<{width}}  {value}" for name, value in rows)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: servers are stopped
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="CPU check: tiny model, 2 processes (gloo), a few steps")
    parser.add_argument("--gpus", type=int, default=0, help="processes/workers (default: all)")
    parser.add_argument("--parts", default="training,serving",
                        help="comma-separated: training, serving (serving includes the kill)")
    parser.add_argument("--train-steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=1, help="per-GPU batch (held constant)")
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=0, help="default: 2 per worker")
    parser.add_argument("--serve-steps", type=int, default=None)
    parser.add_argument("--no-kill", action="store_true")
    parser.add_argument("--kill-after", type=float, default=None,
                        help="seconds into the load when one worker is killed")
    parser.add_argument("--watch-seconds", type=float, default=None,
                        help="after the kill, watch /ping until every worker is ready again, "
                             "at most this long (and while the load runs)")
    parser.add_argument("--ready-timeout", type=float, default=900)
    parser.add_argument("--request-timeout", type=float, default=600)
    parser.add_argument("--timeout", type=float, default=3600, help="per training run")
    args = parser.parse_args(argv)
    smoke = args.smoke
    defaults = {"train_steps": (2, 200), "requests": (4, 64), "serve_steps": (2, 20),
                "kill_after": (0.5, 10.0), "watch_seconds": (5.0, 300.0)}
    for name, (small, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if smoke else full)

    import torch

    gpus = args.gpus or (2 if smoke else torch.cuda.device_count())
    RESULTS.update(machine=machine(), command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                   processes=gpus, smoke=smoke)
    if not smoke and gpus < 2:
        RESULTS["error"] = (f"{gpus} GPU(s) visible: the multi-GPU run needs two or more "
                            "(use --smoke for the CPU check)")
    else:
        parts = {part.strip() for part in args.parts.split(",") if part.strip()}
        with tempfile.TemporaryDirectory(prefix="easel-multi-gpu-") as tmp:
            work = Path(tmp)
            for part, bench in (("training", bench_training), ("serving", bench_serving)):
                if part not in parts:
                    continue
                if not (work / "model").is_dir():
                    from easel_inference.builder import build_model_dir

                    build_model_dir(work / "model", arch="sd15",
                                    size="tiny" if smoke else "full", name="bench-sd15", seed=0)
                try:
                    bench(work, args, gpus)
                except Exception as exc:  # noqa: BLE001 - reported in the same JSON
                    RESULTS[f"{part}_error"] = f"{type(exc).__name__}: {exc}"
    text = json.dumps(RESULTS, indent=1, default=str)
    print(text)
    print(table())
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, "multi_gpu.json").write_text(text + "\n")
    return 1 if any(key.endswith("error") for key in RESULTS) else 0


if __name__ == "__main__":
    raise SystemExit(main())
