"""SD3.5 / FLUX.1 / SDXL inference at full size (GPU machine, not CI): stock diffusers against
Easel, in one run, on random weights (speed depends on the architecture, not the weights).

Full size builds each architecture from the configs Easel ships (`flow_configs.py`; SDXL from the
package's SDXL configs) directly on the GPU in bfloat16 (SDXL float16), never on the CPU in
float32. Rows, each the median of --repeat calls after --warmup:

- stock: the diffusers pipeline called as a diffusers user does (`pipe(prompt, ...)`, PIL out).
- easel: the same pipeline object served by Easel's txt2img handler (`Engine.handlers()`, the code
  behind `/invocations` without HTTP: validation, family defaults, sampler mapping, PNG + base64).
- peak_gib: the GPU's peak memory during the Easel rows.
- --lora adds lora_first_seconds (the first call with a random rank-16 kohya LoRA on every
  transformer linear and CLIP-L: its fuse included), lora_seconds (steady, fused), and
  lora_changes_image / lora_restored_exactly (the image without the LoRA afterwards is the one
  before, byte for byte), lora_weights_restored (every transformer and text-encoder tensor's sum
  and sum of squares as before) and same_request_same_image (two identical requests before the
  LoRA give the same bytes: without it, an inexact image restore says nothing of the weights);
  on a GPU also lora_first_peak_gib, the peak memory of that first call (against peak_gib: the
  kept originals plus one module's update, issue 16/17).
- --fp8 adds fp8_seconds (the stock call again, numpy out, with the transformer stored in
  float8_e4m3fn by `flow_loader.store_fp8`, as EASEL_FP8_WEIGHTS=on serves it), fp8_peak_gib and
  fp8_psnr_db: the PSNR of its image against the 16-bit image of the same seed (SD3.5 / FLUX.1
  only). Random weights: the deviation of trained weights needs the real model (README, Model
  families).

Defaults per family are the issue's: SDXL 1024^2 30 steps, SD3.5 medium 1024^2 28 steps, FLUX.1
schnell 1024^2 4 steps, dev 28 steps. `--size tiny` runs the same code on the tiny CPU builders
(a smoke test of the script). Prints JSON; writes $OUT/flow_bench_<family>.json when OUT is set.

  PYTHONPATH=containers/contracts:containers/inference python bench/flow_families.py \\
      --family flux_schnell [--size tiny] [--fp8]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from timing import median_seconds, psnr_db

PROMPT = "a lighthouse on a cliff at dusk, oil painting"
DEFAULT_STEPS = {"sdxl": 30, "sd35_medium": 28, "sd35_large": 28, "flux_dev": 28,
                 "flux_schnell": 4}


def _full_flow_pipeline(family, dtype: torch.dtype, device: str):
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        T5Config,
        T5EncoderModel,
    )

    from easel_inference.flow_builder import build_t5_tokenizer
    from easel_inference.flow_configs import SHIPPED
    from easel_inference.flow_loader import encoder_slots, is_sd3, pipeline_class
    from easel_inference.tokenizer import build_clip_tokenizer

    configs = SHIPPED[family]

    def fields(config: dict) -> dict:
        return {k: v for k, v in config.items()
                if not k.startswith("_") and k not in ("architectures", "model_type")}

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            cls = SD3Transformer2DModel if is_sd3(family) else FluxTransformer2DModel
            parts = {"transformer": cls.from_config(fields(configs["transformer"])),
                     "vae": AutoencoderKL.from_config(fields(configs["vae"]))}
            for encoder, slot in encoder_slots(family).items():
                if encoder == "t5xxl":
                    parts[slot] = T5EncoderModel(T5Config(**fields(configs[slot])))
                    # speed does not depend on which ids: a toy tokenizer drives the real T5 here
                    parts[slot.replace("text_encoder", "tokenizer")] = build_t5_tokenizer()
                else:
                    model = CLIPTextModelWithProjection if is_sd3(family) else CLIPTextModel
                    parts[slot] = model(CLIPTextConfig(**fields(configs[slot])))
                    parts[slot.replace("text_encoder", "tokenizer")] = build_clip_tokenizer(
                        **({"pad_token": "!"} if encoder == "openclip_g" else {}))
    finally:
        torch.set_default_dtype(previous)
    parts["scheduler"] = FlowMatchEulerDiscreteScheduler.from_config(fields(configs["scheduler"]))
    return pipeline_class(family)(**parts).to(device, dtype)


def build(family: str, size: str, device: str):
    from easel_contracts.families import ModelFamily

    family = ModelFamily(family)
    if family is ModelFamily.SDXL:
        from easel_inference.builder import build_pipeline

        return build_pipeline(arch="sdxl", size=size).to(device, torch.float16 if
                                                              device == "cuda" else torch.float32)
    if size == "tiny":
        from easel_inference.flow_builder import build_flow_pipeline

        return build_flow_pipeline(family).to(device)
    return _full_flow_pipeline(family, torch.bfloat16, device)


def lora_rows(engine, pipe, request, *, lora_dir: Path, device: str, warmup: int,
              repeat: int) -> dict:
    """A random kohya LoRA on every linear of the transformer (fused qkv / linear1 included) and
    on CLIP-L, served through the same handler: the first call (fuse), the steady call with the
    LoRA, and whether the image without it afterwards is the one before, byte for byte."""
    from safetensors.torch import save_file

    from easel_inference.lora_builder import random_flow_kohya_lora

    lora_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float16).contiguous()
             for k, v in random_flow_kohya_lora(pipe, rank=16).items()}
    save_file(state, str(lora_dir / "bench-kohya.safetensors"))
    handler = engine.handlers()["txt2img"]
    with_lora = request.model_copy(update={"prompt": request.prompt + " <lora:bench-kohya:0.8>"})

    def image(which) -> str:
        return handler(which, time.perf_counter()).images[0]

    def fingerprint() -> list[tuple[float, float]]:  # every weight LoRAs may touch
        modules = [pipe.transformer, *(getattr(pipe, n) for n in ("text_encoder", "text_encoder_2")
                                       if getattr(pipe, n, None) is not None)]
        return [(float(t.double().sum()), float(t.double().square().sum()))
                for m in modules for t in m.state_dict().values()]

    weights = fingerprint()
    before = image(request)
    same = image(request) == before
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    lora_image = image(with_lora)
    if device == "cuda":
        torch.cuda.synchronize()
    row: dict[str, object] = {"lora_first_seconds": round(time.perf_counter() - started, 4),
                              "lora_tensors": len(state)}
    if device == "cuda":
        row["lora_first_peak_gib"] = round(torch.cuda.max_memory_allocated() / 1024**3, 2)
    row["lora_seconds"] = median_seconds(lambda: image(with_lora), device=device, warmup=warmup,
                                         repeat=repeat)
    row["lora_changes_image"] = lora_image != before
    row["lora_restored_exactly"] = image(request) == before  # this request restores the weights
    row["lora_weights_restored"] = fingerprint() == weights
    row["same_request_same_image"] = same  # the GPU repeats itself (else "restored" can't tell)
    return row


def fp8_row(pipe, *, steps: int, side: int, device: str, warmup: int, repeat: int) -> dict:
    """The FP8-weights row: speed, peak memory and PSNR against the 16-bit image (same seed)."""
    from easel_inference.flow_loader import store_fp8

    def image() -> np.ndarray:
        return pipe(PROMPT, num_inference_steps=steps, height=side, width=side,
                    generator=torch.Generator("cpu").manual_seed(1), output_type="np").images[0]

    reference = image()
    store_fp8(pipe.transformer, pipe.transformer.dtype)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    row: dict[str, object] = {"fp8_seconds": median_seconds(image, device=device, warmup=warmup,
                                                            repeat=repeat)}
    if device == "cuda":
        row["fp8_peak_gib"] = round(torch.cuda.max_memory_allocated() / 1024**3, 2)
    row["fp8_psnr_db"] = psnr_db(reference, image(), peak=1.0)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(DEFAULT_STEPS), default="flux_schnell")
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--side", type=int)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--lora", action="store_true",
                        help="add the LoRA rows (a random rank-16 kohya LoRA: first call with "
                             "the fuse, steady calls, exact restore)")
    parser.add_argument("--fp8", action="store_true",
                        help="add the FP8-weights row (speed, peak memory, PSNR vs 16-bit)")
    args = parser.parse_args(argv)
    if args.fp8 and args.family == "sdxl":
        parser.error("--fp8: FP8 weights are served for SD3.5 and FLUX.1 only, not SDXL")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    steps = args.steps or (DEFAULT_STEPS[args.family] if args.size == "full" else 2)
    side = args.side or (1024 if args.size == "full" else 64)
    results: dict[str, object] = {"family": args.family, "size": args.size, "device": device,
                                  "steps": steps, "side": side}
    started = time.perf_counter()
    pipe = build(args.family, args.size, device)
    pipe.set_progress_bar_config(disable=True)
    results["build_seconds"] = round(time.perf_counter() - started, 1)

    def stock() -> None:
        pipe(PROMPT, num_inference_steps=steps, height=side, width=side,
             generator=torch.Generator("cpu").manual_seed(1))

    results["stock_seconds"] = median_seconds(stock, device=device, warmup=args.warmup,
                                              repeat=args.repeat)

    from easel_contracts.invocations import Txt2ImgRequest
    from easel_inference.app import build_engine
    from easel_inference.pipelines import PipelineManager
    from easel_inference.settings import Settings

    with tempfile.TemporaryDirectory(prefix="easel-flow-bench-") as work:
        folder = Path(work) / "Stable-diffusion" / "bench"
        pipe.save_config(str(folder))  # model_index.json: the name the server lists
        for name in ("transformer", "unet"):
            if getattr(pipe, name, None) is not None:
                getattr(pipe, name).save_config(str(folder / name))
        settings = replace(Settings.from_env(), model_dir=Path(work), device=device,
                           warmup=False, lora_cache_dir=Path(work) / "cache")
        engine = build_engine(settings)
        engine.manager = PipelineManager(settings, loader=lambda _path, **_kw: pipe)
        engine.start()
        request = Txt2ImgRequest(prompt=PROMPT, steps=steps, width=side, height=side, seed=1)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()

        def easel() -> None:
            engine.handlers()["txt2img"](request, time.perf_counter())

        results["easel_seconds"] = median_seconds(easel, device=device, warmup=args.warmup,
                                                  repeat=args.repeat)
        if device == "cuda":
            results["peak_gib"] = round(torch.cuda.max_memory_allocated() / 1024**3, 2)
        if args.lora:
            results.update(lora_rows(engine, pipe, request, lora_dir=Path(work) / "Lora",
                                     device=device, warmup=args.warmup, repeat=args.repeat))
    results["easel_over_stock"] = round(results["easel_seconds"] / results["stock_seconds"], 3)
    if args.fp8:
        results.update(fp8_row(pipe, steps=steps, side=side, device=device,
                               warmup=args.warmup, repeat=args.repeat))
        results["fp8_over_stock"] = round(results["fp8_seconds"] / results["stock_seconds"], 3)
    text = json.dumps(results, indent=1)
    print(text, flush=True)
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, f"flow_bench_{args.family}.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
