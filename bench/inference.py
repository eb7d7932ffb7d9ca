"""Inference benchmark (GPU machine, not CI): Easel's txt2img against stock diffusers, in one run,
on the same full-size SD1.5 weights (random; speed depends on the architecture, not the weights).

- stock: `StableDiffusionPipeline` as a diffusers user writes it: the builder's pipeline moved to
  the GPU in float16, the sampler's scheduler from its config, `pipe(prompt, ...)` returning PIL.
  With LoRAs: `load_lora_weights` for each file and `set_adapters` (PEFT, unfused: the stock way
  of mixing LoRAs per request).
- easel: the same weights saved as a single-file checkpoint and loaded by Easel's loader (as an
  endpoint does), then the txt2img handler of `Engine.handlers()` — the code behind
  `/invocations` without HTTP: payload validation (the contract's request model), prompt
  weighting, LoRAs fused, generation, PNG + base64 encoding.

Same settings for both: 512x512, 20 steps, CFG 7, the sampler given (DPM++ 2M Karras default).
Each figure is the median of --repeat calls after --warmup calls. Prints JSON with the
easel/stock ratios (and writes $OUT/inference_bench.json when OUT is set). With --profile, one
Easel generation is profiled and the top CUDA kernels are written to $OUT/inference_profile.txt;
with --channels-last the Easel generation is also timed with channels-last UNet/VAE weights.

  PYTHONPATH=containers/contracts:containers/inference python bench/inference.py \
      [--size tiny] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from timing import sync, timed

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


def median_seconds(fn, *, device: str, warmup: int, repeat: int) -> float:
    return round(timed(fn, device=device, warmup=warmup, repeat=repeat), 4)


def stock_scheduler(pipe, sampler_name: str):
    from diffusers import DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler

    config = pipe.scheduler.config
    if sampler_name == "DPM++ 2M Karras":
        return DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True)
    if sampler_name == "Euler a":
        return EulerAncestralDiscreteScheduler.from_config(config)
    raise SystemExit("bench knows the stock scheduler of 'DPM++ 2M Karras' and 'Euler a' only")


def time_stock(pipe, *, args: argparse.Namespace, loras: dict[str, Path], device: str,
               dtype: torch.dtype) -> None:
    stock = pipe.to(device, dtype)
    stock.set_progress_bar_config(disable=True)
    stock.scheduler = stock_scheduler(stock, args.sampler)
    settings = dict(num_inference_steps=args.steps, guidance_scale=7.0, width=args.width,
                    height=args.height)

    def stock_call() -> None:
        generator = torch.Generator(device).manual_seed(1234)
        stock(PROMPT, negative_prompt=NEGATIVE, generator=generator, **settings)

    RESULTS["stock_seconds"] = median_seconds(stock_call, device=device, warmup=args.warmup,
                                              repeat=args.repeat)
    dump()
    try:
        for name, path in loras.items():
            stock.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name)
        stock.set_adapters(list(loras), adapter_weights=[0.8, 0.6])
        RESULTS["stock_two_loras_seconds"] = median_seconds(
            stock_call, device=device, warmup=args.warmup, repeat=args.repeat)
    except Exception as exc:  # a stock loader that cannot read a format is a finding, not a crash
        RESULTS["stock_two_loras_error"] = f"{type(exc).__name__}: {exc}"[:300]
    dump()


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
    parser.add_argument("--channels-last", action="store_true",
                        help="also time Easel with channels-last UNet/VAE weights (experiment)")
    args = parser.parse_args(argv)

    from easel_contracts.invocations import Txt2ImgRequest
    from easel_inference.app import build_engine
    from easel_inference.builder import build_pipeline, save_single_file
    from easel_inference.lora_builder import save_random_loras
    from easel_inference.settings import Settings

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    RESULTS.update(size=args.size, steps=args.steps, width=args.width, height=args.height,
                   sampler=args.sampler, device=device, dtype=str(dtype).removeprefix("torch."),
                   torch=torch.__version__)
    if device == "cuda":
        RESULTS["gpu"] = torch.cuda.get_device_name()
    import diffusers

    RESULTS["diffusers"] = diffusers.__version__
    work = Path(tempfile.mkdtemp(prefix="easel-inference-bench-"))
    model_dir = work / "model"
    pipe = build_pipeline(arch="sd15", size=args.size, seed=0)
    for folder in ("Stable-diffusion", "Lora"):
        (model_dir / folder).mkdir(parents=True, exist_ok=True)
    save_single_file(pipe, model_dir / "Stable-diffusion" / "sd15-random.safetensors",
                     embed_configs=args.size == "tiny", write_yaml=args.size == "tiny")
    loras = save_random_loras(pipe, model_dir / "Lora", seed=0)

    # --- stock diffusers ---------------------------------------------------------------
    time_stock(pipe, args=args, loras=loras, device=device, dtype=dtype)
    del pipe
    if device == "cuda":
        torch.cuda.empty_cache()

    # --- Easel ---------------------------------------------------------------------------
    settings = Settings(model_dir=model_dir, lora_cache_dir=work / "cache", device=device,
                        warmup=True)
    engine = build_engine(settings)
    started = time.perf_counter()
    engine.start()
    if not engine.ready:
        RESULTS["easel_error"] = engine.startup_error
        dump()
        return 1
    RESULTS["easel_load_and_warmup_seconds"] = round(time.perf_counter() - started, 2)
    base = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "width": args.width,
            "height": args.height, "steps": args.steps, "cfg_scale": 7, "seed": 1234,
            "sampler_name": args.sampler}
    with_loras = dict(base, prompt=PROMPT + " <lora:style-kohya:0.8> <lora:detail-diffusers:0.6>")

    def easel_call(payload: dict) -> None:
        request = Txt2ImgRequest.model_validate(payload)
        engine.handlers()["txt2img"](request, time.perf_counter())

    RESULTS["easel_seconds"] = median_seconds(lambda: easel_call(base), device=device,
                                              warmup=args.warmup, repeat=args.repeat)
    RESULTS["easel_two_loras_seconds"] = median_seconds(
        lambda: easel_call(with_loras), device=device, warmup=args.warmup, repeat=args.repeat)
    # switching LoRAs on and off every request: fuse + restore cost included
    toggled = iter([with_loras, base] * (args.warmup + args.repeat + 1))
    RESULTS["easel_alternating_loras_seconds"] = median_seconds(
        lambda: easel_call(next(toggled)), device=device, warmup=args.warmup, repeat=args.repeat)
    RESULTS["easel_over_stock"] = round(RESULTS["easel_seconds"] / RESULTS["stock_seconds"], 3)
    if "stock_two_loras_seconds" in RESULTS:
        RESULTS["easel_over_stock_two_loras"] = round(
            RESULTS["easel_two_loras_seconds"] / RESULTS["stock_two_loras_seconds"], 3)
    if device == "cuda":
        RESULTS["easel_peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    dump()
    if args.channels_last:
        # experiment, not what the server does: the same generation with channels-last weights
        pipe = engine.manager.get(None).pipe
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
        RESULTS["easel_channels_last_seconds"] = median_seconds(
            lambda: easel_call(base), device=device, warmup=args.warmup, repeat=args.repeat)
        dump()
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        with profile(activities=activities) as prof:
            easel_call(base)
            sync(device)
        sort = "cuda_time_total" if device == "cuda" else "cpu_time_total"
        table = prof.key_averages().table(sort_by=sort, row_limit=30)
        out = os.environ.get("OUT")
        if out:
            Path(out, "inference_profile.txt").write_text(table)
        else:
            print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
