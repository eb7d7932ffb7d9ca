"""Inference benchmark (GPU machine, not CI): Easel's txt2img against stock diffusers, in one run,
on the same full-size SD1.5 weights (random; speed depends on the architecture, not the weights).

Rows, all in one process on one GPU, same settings (512x512, 20 steps, CFG 7, the sampler given,
DPM++ 2M Karras by default), each the median of --repeat calls after --warmup calls:

- stock eager: `StableDiffusionPipeline` as a diffusers user writes it (float16 on the GPU, the
  sampler's scheduler from its config, `pipe(prompt, ...)` returning PIL).
- stock anchor: the same pipeline with ../shared/bench/stock_anchor_graphs.py's setup: fused QKV,
  channels-last, `torch.compile(unet, mode="reduce-overhead", fullgraph=True)`.
- Easel eager (EASEL_FAST_PATH=off, the fallback) and Easel fast path (EASEL_FAST_PATH=on): the
  weights saved as a single-file checkpoint and loaded by Easel's loader (as an endpoint does),
  then the txt2img handler of `Engine.handlers()`, the code behind `/invocations` without HTTP:
  payload validation, prompt weighting, LoRAs fused, generation, PNG + base64 encoding (and once
  more with the PNG encoding patched out: payload -> PIL image, the anchor's end point). The
  fast path is also timed with two LoRAs, with LoRA sets alternating every request, at 50 steps,
  and through HTTP `/invocations` (uvicorn on 127.0.0.1, JSON in, base64 PNG out).
- psnr_fast_vs_eager_db: the fast path's image against Easel eager's, same seed and sampler.
- batch 4: stock eager and the Easel fast path at batch_size 4 (images a second beside them).
- SDXL (--sdxl-side, 1024 by default; --no-sdxl skips it): a full-size SDXL architecture
  (random weights) at --sdxl-steps (30), stock eager and the Easel fast path, in process.
  --sdxl-only runs these rows alone (a GPU call too short for both models).

Prints JSON with the ratios (and writes $OUT/inference_bench.json when OUT is set). With
--profile, one Easel fast-path generation is profiled and the top CUDA kernels are written to
$OUT/inference_profile.txt. EASEL_FAST_* variables (e.g. EASEL_FAST_GRAPHS=0 for a CPU check of
the script) apply to the fast-path rows.

  PYTHONPATH=containers/contracts:containers/inference python bench/inference.py \
      [--size tiny] [--profile]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import tempfile
import time
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path

import torch
from timing import median_seconds, psnr_db, sync

RESULTS: dict[str, object] = {}
PROMPT = "a lighthouse on a cliff at dusk, oil painting"
NEGATIVE = "blurry"


def dump() -> None:
    text = json.dumps(RESULTS, indent=1)
    print(text, flush=True)
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, "inference_bench.json").write_text(text + "\n")


def stock_scheduler(pipe, sampler_name: str):
    from diffusers import DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler

    config = pipe.scheduler.config
    if sampler_name == "DPM++ 2M Karras":
        return DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True)
    if sampler_name == "Euler a":
        return EulerAncestralDiscreteScheduler.from_config(config)
    raise SystemExit("bench knows the stock scheduler of 'DPM++ 2M Karras' and 'Euler a' only")


def time_stock(pipe, *, args: argparse.Namespace, device: str, dtype: torch.dtype) -> None:
    stock = pipe.to(device, dtype)
    stock.set_progress_bar_config(disable=True)
    stock.scheduler = stock_scheduler(stock, args.sampler)
    settings = dict(num_inference_steps=args.steps, guidance_scale=7.0, width=args.width,
                    height=args.height)

    def stock_call() -> None:
        generator = torch.Generator(device).manual_seed(1234)
        stock(PROMPT, negative_prompt=NEGATIVE, generator=generator, **settings)

    RESULTS["stock_eager_seconds"] = median_seconds(stock_call, device=device,
                                                    warmup=args.warmup, repeat=args.repeat)
    RESULTS["stock_eager_batch_seconds"] = median_seconds(
        lambda: stock(PROMPT, negative_prompt=NEGATIVE, num_images_per_prompt=args.batch,
                      generator=torch.Generator(device).manual_seed(1234), **settings),
        device=device, warmup=1, repeat=args.repeat)
    RESULTS["stock_eager_batch_images_per_second"] = round(
        args.batch / RESULTS["stock_eager_batch_seconds"], 2)
    dump()
    if device != "cuda":
        RESULTS["stock_anchor_skipped"] = "needs CUDA (reduce-overhead = CUDA graphs)"
        return
    try:  # the stock compile anchor's setup, on the stock pipeline
        stock.unet.fuse_qkv_projections()
        stock.unet.to(memory_format=torch.channels_last)
        stock.vae.to(memory_format=torch.channels_last)
        stock.unet = torch.compile(stock.unet, mode="reduce-overhead", fullgraph=True)
        started = time.perf_counter()
        stock_call()
        sync(device)
        RESULTS["stock_anchor_first_call_seconds"] = round(time.perf_counter() - started, 2)
        RESULTS["stock_anchor_seconds"] = median_seconds(
            stock_call, device=device, warmup=args.warmup, repeat=args.repeat)
    except Exception as exc:  # noqa: BLE001 - a failing anchor is a finding, not a crash
        RESULTS["stock_anchor_error"] = f"{type(exc).__name__}: {exc}"[:300]
    dump()


def png_psnr_db(first: str, second: str) -> float:
    """PSNR of two base64 PNGs (8-bit RGB), in dB (inf when identical)."""
    import numpy as np
    from PIL import Image

    a, b = (np.asarray(Image.open(io.BytesIO(base64.b64decode(image))).convert("RGB"))
            for image in (first, second))
    return psnr_db(a, b, peak=255.0)


def time_http(engine, payload: dict, *, args: argparse.Namespace) -> None:
    """The fast path through HTTP /invocations: uvicorn in a thread, urllib as the client."""
    import socket
    import threading
    import urllib.request

    import uvicorn

    from easel_inference.app import create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(engine=engine), host="127.0.0.1",
                                           port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    body = json.dumps({"task": "txt2img", "payload": payload}).encode()
    deadline = time.monotonic() + 300
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError("server not ready in 300 s") from None
                time.sleep(0.5)

        def post() -> None:
            request = urllib.request.Request(f"{url}/invocations", data=body,
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=300) as response:
                json.loads(response.read())["images"][0]

        RESULTS["easel_fast_http_seconds"] = median_seconds(
            post, device="cpu", warmup=args.warmup + 1, repeat=args.repeat)
    finally:
        server.should_exit = True


def time_sdxl(*, args: argparse.Namespace, work: Path, device: str, dtype: torch.dtype) -> None:
    """SDXL at --sdxl-side: the Easel fast path (in process), then stock diffusers eager."""
    from easel_contracts.invocations import Txt2ImgRequest
    from easel_inference.builder import build_pipeline, save_single_file

    model_dir = work / "sdxl-model"
    (model_dir / "Stable-diffusion").mkdir(parents=True, exist_ok=True)
    pipe = build_pipeline(arch="sdxl", size=args.size, seed=0)
    save_single_file(pipe, model_dir / "Stable-diffusion" / "sdxl-random.safetensors",
                     embed_configs=args.size == "tiny", write_yaml=args.size == "tiny")
    side = args.sdxl_side
    RESULTS.update(sdxl_side=side, sdxl_steps=args.sdxl_steps)
    payload = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "width": side, "height": side,
               "steps": args.sdxl_steps, "cfg_scale": 7, "seed": 1234,
               "sampler_name": args.sampler}
    engine, RESULTS["sdxl_easel_fast_load_and_warmup_seconds"] = easel_engine(
        model_dir, work, device, fast=True)
    request = Txt2ImgRequest.model_validate(payload)
    RESULTS["sdxl_easel_fast_seconds"] = median_seconds(
        lambda fast=engine: fast.handlers()["txt2img"](request, time.perf_counter()),
        device=device, warmup=args.warmup, repeat=args.repeat)
    dump()
    del engine
    if device == "cuda":
        torch.cuda.empty_cache()
    stock = pipe.to(device, dtype)
    stock.set_progress_bar_config(disable=True)
    stock.scheduler = stock_scheduler(stock, args.sampler)
    RESULTS["sdxl_stock_eager_seconds"] = median_seconds(
        lambda: stock(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=args.sdxl_steps,
                      guidance_scale=7.0, width=side, height=side,
                      generator=torch.Generator(device).manual_seed(1234)),
        device=device, warmup=1, repeat=args.repeat)


def easel_engine(model_dir: Path, work: Path, device: str, *, fast: bool):
    from easel_inference.app import build_engine
    from easel_inference.settings import Settings

    settings = replace(Settings.from_env(), model_dir=model_dir, lora_cache_dir=work / "cache",
                       device=device, warmup=True, fast_path="on" if fast else "off")
    engine = build_engine(settings)
    started = time.perf_counter()
    engine.start()
    if not engine.ready:
        raise SystemExit(f"Easel did not start: {engine.startup_error}")
    return engine, round(time.perf_counter() - started, 2)


def time_startup(model_dir: Path, work: Path, device: str, base: dict, *, started: float) -> int:
    """Start -> first image: engine start (load, compile or cache read, warm-up) and one
    txt2img call, timed from after the weights were written (the weights' build is not a
    server's start)."""
    from easel_contracts.invocations import Txt2ImgRequest

    RESULTS["model_build_seconds"] = round(time.perf_counter() - started, 2)
    began = time.perf_counter()
    engine, RESULTS["easel_fast_load_and_warmup_seconds"] = easel_engine(
        model_dir, work, device, fast=True)
    engine.handlers()["txt2img"](Txt2ImgRequest.model_validate(base), time.perf_counter())
    sync(device)
    RESULTS["easel_fast_start_to_first_image_seconds"] = round(time.perf_counter() - began, 2)
    RESULTS["easel_fast_applied"] = list(engine.manager.get(None).fast_path.applied)
    # the sizes compiled at start-up, and the speed timed: a squared term above zero says a
    # second size (an offered one, on the fast path) was timed
    RESULTS["easel_fast_warmed_sizes"] = [list(size) for size in engine.warmed_sizes]
    RESULTS["easel_fast_speed"] = engine.speed.model_dump() if engine.speed else None
    dump()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--sampler", default="DPM++ 2M Karras")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--long-steps", type=int, default=50, help="steps of the long rows")
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP row")
    parser.add_argument("--batch", type=int, default=4, help="batch_size of the batch rows")
    parser.add_argument("--no-sdxl", action="store_true", help="skip the SDXL rows")
    parser.add_argument("--sdxl-side", type=int, default=1024)
    parser.add_argument("--sdxl-steps", type=int, default=30)
    parser.add_argument("--sdxl-only", action="store_true",
                        help="only the SDXL rows (stock eager and the Easel fast path, in one "
                             "run), for a GPU session too short for both models")
    parser.add_argument("--startup-only", action="store_true",
                        help="only time process start -> first image with the fast path (run it "
                             "after a full run on the same machine: Inductor's on-disk cache is "
                             "then present, as on an instance that downloaded the compile cache)")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    from easel_contracts.invocations import Txt2ImgRequest
    from easel_inference.builder import build_pipeline, save_single_file
    from easel_inference.lora_builder import save_random_loras

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    RESULTS.update(size=args.size, steps=args.steps, long_steps=args.long_steps,
                   width=args.width, height=args.height,
                   sampler=args.sampler, device=device, dtype=str(dtype).removeprefix("torch."),
                   torch=torch.__version__)
    if device == "cuda":
        RESULTS["gpu"] = torch.cuda.get_device_name()
    import diffusers
    import transformers

    RESULTS["diffusers"] = diffusers.__version__
    RESULTS["transformers"] = transformers.__version__
    work = Path(tempfile.mkdtemp(prefix="easel-inference-bench-"))
    if args.sdxl_only:
        time_sdxl(args=args, work=work, device=device, dtype=dtype)
        add_ratios()
        return 0
    model_dir = work / "model"
    pipe = build_pipeline(arch="sd15", size=args.size, seed=0)
    for folder in ("Stable-diffusion", "Lora"):
        (model_dir / folder).mkdir(parents=True, exist_ok=True)
    save_single_file(pipe, model_dir / "Stable-diffusion" / "sd15-random.safetensors",
                     embed_configs=args.size == "tiny", write_yaml=args.size == "tiny")
    save_random_loras(pipe, model_dir / "Lora", seed=0)

    base = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "width": args.width,
            "height": args.height, "steps": args.steps, "cfg_scale": 7, "seed": 1234,
            "sampler_name": args.sampler}
    with_loras = dict(base, prompt=PROMPT + " <lora:style-kohya:0.8> <lora:detail-diffusers:0.6>")
    if args.startup_only:
        return time_startup(model_dir, work, device, base, started=started)

    def call(engine, payload: dict) -> str:
        request = Txt2ImgRequest.model_validate(payload)
        return engine.handlers()["txt2img"](request, time.perf_counter()).images[0]

    def timed_call(engine, payload: dict) -> float:
        return median_seconds(lambda: call(engine, payload), device=device,
                              warmup=args.warmup, repeat=args.repeat)

    # --- Easel eager (the fallback) ------------------------------------------------------
    engine, RESULTS["easel_eager_load_and_warmup_seconds"] = easel_engine(
        model_dir, work, device, fast=False)
    RESULTS["easel_eager_seconds"] = timed_call(engine, base)
    reference = call(engine, base)
    RESULTS["easel_eager_long_seconds"] = timed_call(engine, dict(base, steps=args.long_steps))
    dump()
    del engine
    if device == "cuda":
        torch.cuda.empty_cache()

    # --- Easel fast path -------------------------------------------------------------------
    engine, RESULTS["easel_fast_load_and_warmup_seconds"] = easel_engine(
        model_dir, work, device, fast=True)
    report = engine.manager.get(None).fast_path
    started = time.perf_counter()
    call(engine, base)
    sync(device)
    RESULTS["easel_fast_first_call_seconds"] = round(time.perf_counter() - started, 2)
    RESULTS["easel_fast_seconds"] = timed_call(engine, base)
    # the "in process": validated payload -> PIL image, as the anchor (PNG encoding
    # patched out for this row only)
    from easel_inference import generation as generation_module

    def no_png(image, parameters=None):
        done: Future[str] = Future()
        done.set_result("")
        return done

    real_encode = generation_module.encode_png_later
    generation_module.encode_png_later = no_png
    try:
        RESULTS["easel_fast_pil_seconds"] = timed_call(engine, base)
    finally:
        generation_module.encode_png_later = real_encode
    RESULTS["psnr_fast_vs_eager_db"] = png_psnr_db(call(engine, base), reference)
    RESULTS["easel_fast_applied"] = list(report.applied)
    RESULTS["easel_fast_fallbacks"] = dict(report.fallbacks)
    dump()
    RESULTS["easel_fast_two_loras_seconds"] = timed_call(engine, with_loras)
    # switching LoRA sets every request: fuse + restore cost included, no recompile expected
    toggled = iter([with_loras, base] * (args.warmup + args.repeat + 1))
    RESULTS["easel_fast_alternating_loras_seconds"] = median_seconds(
        lambda fast=engine: call(fast, next(toggled)), device=device, warmup=args.warmup,
        repeat=args.repeat)
    RESULTS["easel_fast_long_seconds"] = timed_call(engine, dict(base, steps=args.long_steps))
    dump()
    RESULTS["batch"] = args.batch
    dump()
    # batch 4 is a shape the warm-up did not cover: a server would serve it eagerly (or compile
    # it with EASEL_FAST_COMPILE_ON_REQUEST=1); here its compile is part of the warm-up calls
    report.compile_new_shapes = True
    RESULTS["easel_fast_batch_seconds"] = timed_call(engine, dict(base, batch_size=args.batch))
    report.compile_new_shapes = False
    RESULTS["easel_fast_batch_images_per_second"] = round(
        args.batch / RESULTS["easel_fast_batch_seconds"], 2)
    RESULTS["easel_fast_fallbacks"] = dict(report.fallbacks)
    png = call(engine, base)
    from PIL import Image

    from easel_inference.images import encode_png

    image = Image.open(io.BytesIO(base64.b64decode(png))).convert("RGB")
    RESULTS["png_base64_seconds"] = median_seconds(lambda: encode_png(image), device="cpu",
                                                   warmup=1, repeat=5)
    if device == "cuda":
        RESULTS["easel_fast_peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    dump()
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        with profile(activities=activities) as prof:
            call(engine, base)
            sync(device)
        sort = "cuda_time_total" if device == "cuda" else "cpu_time_total"
        table = prof.key_averages().table(sort_by=sort, row_limit=30)
        out = os.environ.get("OUT")
        if out:
            Path(out, "inference_profile.txt").write_text(table)
        else:
            print(table)
    if not args.no_http:
        try:
            time_http(engine, base, args=args)
        except Exception as exc:  # noqa: BLE001 - recorded beside the other rows
            RESULTS["easel_fast_http_error"] = f"{type(exc).__name__}: {exc}"[:300]
        dump()
    del engine
    if device == "cuda":
        torch.cuda.empty_cache()

    # --- stock diffusers: eager, then the compile anchor -----------------------------------
    time_stock(pipe, args=args, device=device, dtype=dtype)
    del pipe
    if device == "cuda":
        torch.cuda.empty_cache()
    if not args.no_sdxl:
        try:
            time_sdxl(args=args, work=work, device=device, dtype=dtype)
        except Exception as exc:  # noqa: BLE001 - recorded beside the other rows
            RESULTS["sdxl_error"] = f"{type(exc).__name__}: {exc}"[:300]
        dump()
    add_ratios()
    return 0


RATIOS = {
    "fast_over_easel_eager": ("easel_fast_seconds", "easel_eager_seconds"),
    "fast_over_stock_eager": ("easel_fast_seconds", "stock_eager_seconds"),
    "fast_over_stock_anchor": ("easel_fast_seconds", "stock_anchor_seconds"),
    "fast_pil_over_stock_anchor": ("easel_fast_pil_seconds", "stock_anchor_seconds"),
    "easel_eager_over_stock_eager": ("easel_eager_seconds", "stock_eager_seconds"),
    "fast_two_loras_over_none": ("easel_fast_two_loras_seconds", "easel_fast_seconds"),
    "fast_long_over_easel_eager_long": ("easel_fast_long_seconds", "easel_eager_long_seconds"),
    "fast_http_over_stock_anchor": ("easel_fast_http_seconds", "stock_anchor_seconds"),
    "fast_batch_over_stock_eager_batch": ("easel_fast_batch_seconds",
                                          "stock_eager_batch_seconds"),
    "sdxl_fast_over_stock_eager": ("sdxl_easel_fast_seconds", "sdxl_stock_eager_seconds"),
}


def add_ratios() -> None:
    """Each ratio whose two rows ran, then the results are written."""
    for name, (top, bottom) in RATIOS.items():
        if top in RESULTS and bottom in RESULTS:
            RESULTS[name] = round(RESULTS[top] / RESULTS[bottom], 3)
    dump()


if __name__ == "__main__":
    raise SystemExit(main())
