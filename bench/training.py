"""Training benchmark (GPU machine, not CI): Easel's LoRA loop against a stock diffusers+peft
LoRA step, in one run, on the full-size SD1.5 architecture with random weights.

Settings: 20 synthetic concept images at 512x512, prior preservation off, text encoder frozen,
LoRA rank 4 on the UNet attention projections (to_q/k/v/out.0, as the stock step), AdamW.

- stock: the DreamBooth-LoRA step of ../shared/bench/stock_anchor.py: every step encodes the image
  with the VAE and the prompt with the text encoder, fp32 UNet under bf16 autocast, AdamW.
- easel: Easel's own training step (easel_training.trainer.Trainer._train_step), i.e. the loop a
  job runs. DECLARED CACHING: the text encoder is frozen, so prompt embeddings are computed once;
  each image's VAE latent distribution (mean, std) is computed once and a fresh latent is sampled
  from it every step (the VAE is frozen, so this is the same distribution an uncached loop
  samples). Frozen weights are stored in bf16, LoRA weights and optimizer state in fp32, bf16
  autocast, channels-last, SDPA attention, fused AdamW, no host/device syncs inside a step;
  optionally torch.compile (--compile MODE).
- easel_1000_steps: a whole job's training part (setup with latent/prompt caching, 1,000 steps,
  checkpoints every 250 steps, result saved), excluding the model build/load; previews off.

Prints JSON (and writes $OUT/training_bench.json when OUT is set): s/step, images/s, peak GPU
memory and the easel/stock ratios. `--quick` runs the same code on the CPU with the tiny model.

  PYTHONPATH=containers/inference:containers/training python bench/training.py [--compile MODE]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timing import sync, timed

RESULTS: dict[str, object] = {}


def dump() -> None:
    print(json.dumps(RESULTS), flush=True)
    out = os.environ.get("OUT")
    if out:
        Path(out, "training_bench.json").write_text(json.dumps(RESULTS, indent=1))


def peak_gb(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def write_concepts(folder: Path, count: int, size: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        base = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((size, size), Image.Resampling.BICUBIC)
        image.save(folder / f"concept-{index:02d}.png")


# ---- stock diffusers + peft step (as ../shared/bench/stock_anchor.py) ---------------------------
def stock_lora_step_times(pipe, *, device: str, rank: int, batches: list[int], warmup: int,
                          repeat: int, resolution: int) -> dict[str, float]:
    from peft import LoraConfig

    half = torch.float16 if device == "cuda" else torch.float32
    vae = pipe.vae.to(device, half).eval()
    text_encoder = pipe.text_encoder.to(device, half).eval()
    unet = pipe.unet.to(device)
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scaling = vae.config.scaling_factor
    vocab = text_encoder.config.vocab_size
    autocast = torch.autocast(device, dtype=torch.bfloat16) if device == "cuda" \
        else torch.autocast("cpu", enabled=False)

    def step(batch: int) -> None:
        image = torch.randn(batch, 3, resolution, resolution, device=device, dtype=half)
        with torch.no_grad():
            latents = vae.encode(image).latent_dist.sample() * scaling
            hidden = text_encoder(torch.randint(0, vocab, (batch, 77), device=device))[0]
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, 1000, (batch,), device=device)
        with autocast:
            prediction = unet(latents.float() + noise.float(), timesteps,
                              encoder_hidden_states=hidden.float()).sample
        loss = torch.nn.functional.mse_loss(prediction.float(), noise.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    results = {}
    reset_peak(device)
    for batch in batches:
        results[f"stock_s_per_step_bs{batch}"] = timed(lambda b=batch: step(b), device=device,
                                                       warmup=warmup, repeat=repeat)
        if batch == batches[0]:
            results["stock_peak_gb_bs1"] = peak_gb(device)
    return results


# ---- Easel's loop ------------------------------------------------------------------------------
def make_trainer(pipe, *, root: Path, hyperparameters: dict[str, str], device: str):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from easel_contracts.hyperparameters import HyperParameters
    from easel_training.base_model import BaseModel, describe_pipeline
    from easel_training.dataset import build_concept_data
    from easel_training.images import load_image_records
    from easel_training.paths import JobPaths
    from easel_training.stopping import StopRequest
    from easel_training.trainer import Trainer, resolve_mixed_precision

    hp = HyperParameters.from_strings(hyperparameters)
    paths = JobPaths(root)
    arch, prediction_type, native = describe_pipeline(pipe)
    base = BaseModel(name="bench-sd15", path=root / "bench-sd15.safetensors", pipe=pipe,
                     arch=arch, prediction_type=prediction_type, native_resolution=native)
    records = load_image_records(paths.channel("concepts"), channel="concepts")
    data = build_concept_data(hp=hp, records=records, class_records=[],
                              resolution=hp.resolution or native)
    mixed = resolve_mixed_precision(hp.mixed_precision, cuda=device == "cuda")
    AcceleratorState._reset_state()
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision=mixed)
    return Trainer(hp=hp, paths=paths, base=base, data=data, accelerator=accelerator,
                   mixed_precision=mixed, stop=StopRequest())


def easel_step_times(trainer, *, device: str, batches: list[int], warmup: int, repeat: int,
                     label: str) -> dict[str, float]:
    """Median s/step of Easel's step per batch size; the first call (compilation, cuDNN
    autotuning) is timed on its own."""
    from easel_training.plan import BatchPlan

    results: dict[str, float] = {}
    counter = iter(range(10**9))
    for batch in batches:
        trainer.plan = BatchPlan(trainer.data.bucket_groups, batch_size=batch,
                                 world_size=trainer.world_size, seed=trainer.hp.seed)
        reset_peak(device)
        started = time.perf_counter()
        losses = [trainer._train_step(next(counter))]
        sync(device)
        results[f"{label}_first_step_s_bs{batch}"] = time.perf_counter() - started
        losses += [trainer._train_step(next(counter)) for _ in range(2)]
        results[f"{label}_first_losses_bs{batch}"] = [float(x) for x in losses]
        seconds = timed(lambda: trainer._train_step(next(counter)), device=device,
                        warmup=warmup, repeat=repeat)
        results[f"{label}_s_per_step_bs{batch}"] = seconds
        results[f"{label}_images_per_s_bs{batch}"] = batch / seconds
        results[f"{label}_peak_gb_bs{batch}"] = peak_gb(device)
    return results


def easel_timed_run(trainer, *, device: str, steps: int) -> dict[str, float]:
    """The job loop (progress, checkpoints every 250 steps) for ``steps`` steps at batch 1 on an
    already set-up trainer, plus saving the LoRA."""
    from easel_training.plan import BatchPlan
    from easel_training.progress import ProgressReporter
    from easel_training.results import save_lora_result

    trainer.plan = BatchPlan(trainer.data.bucket_groups, batch_size=1,
                             world_size=trainer.world_size, seed=trainer.hp.seed)
    progress = ProgressReporter(trainer.paths.progress, total_steps=steps, images_per_step=1,
                                min_interval_s=10.0)
    started = time.perf_counter()
    result = trainer.run(progress)
    sync(device)
    trained = time.perf_counter()
    save_lora_result(model_dir=trainer.paths.model, hp=trainer.hp, base=trainer.base,
                     steps=result.step)
    done = time.perf_counter()
    return {"run_steps": result.step, "run_train_s": trained - started,
            "run_save_s": done - trained, "run_final_loss": result.loss_curve[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CPU smoke run on the tiny model")
    parser.add_argument("--modes", default="none,graphs",
                        help="comma-separated variants of Easel's step, each timed on a fresh "
                             "model: none (eager), graphs (CUDA-graph step, Easel's default on "
                             "a GPU), or a torch.compile mode (default, reduce-overhead, "
                             "max-autotune-no-cudagraphs); the whole run uses the last")
    parser.add_argument("--run-steps", type=int, default=1000,
                        help="steps of the whole run (0 skips it)")
    parser.add_argument("--skip-stock", action="store_true")
    parser.add_argument("--contiguous-too", action="store_true",
                        help="also time the eager step without channels-last")
    args = parser.parse_args()

    from easel_inference.builder import build_pipeline

    device = "cpu" if args.quick else "cuda"
    size, resolution = ("tiny", 64) if args.quick else ("full", 512)
    warmup, repeat = (1, 2) if args.quick else (5, 20)
    batches = [1, 4]
    rank = 4
    RESULTS.update(device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
                   torch=torch.__version__, modes=args.modes, rank=rank,
                   resolution=resolution, images=20)
    try:
        import diffusers
        import peft

        RESULTS.update(diffusers=diffusers.__version__, peft=peft.__version__)
    except ImportError:
        pass
    with tempfile.TemporaryDirectory(prefix="easel-train-bench-") as tmp:
        root = Path(tmp)
        write_concepts(root / "input" / "data" / "concepts", 20, resolution)
        base_settings = {"instance_prompt": "a photo of sks toy", "rank": str(rank),
                         "alpha": str(rank), "resolution": str(resolution),
                         "max_train_steps": str(max(args.run_steps, 1)),
                         "validation_steps": "0", "checkpointing_steps": "250",
                         "mixed_precision": "auto"}

        if not args.skip_stock:
            pipe = build_pipeline(arch="sd15", size=size, seed=0)
            RESULTS.update(stock_lora_step_times(pipe, device=device, rank=rank, batches=batches,
                                                 warmup=warmup, repeat=repeat,
                                                 resolution=resolution))
            del pipe
            dump()

        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        for index, mode in enumerate(modes):
            label = {"none": "easel_eager", "graphs": "easel_graphs"}.get(
                mode, f"easel_compile_{mode.replace('-', '_')}")
            folder = root / label
            folder.mkdir()
            (folder / "input").symlink_to(root / "input", target_is_directory=True)
            compiled = mode not in ("none", "graphs")
            settings = {**base_settings, "cuda_graphs": str(mode == "graphs").lower(),
                        "compile": str(compiled).lower(),
                        "compile_mode": mode if compiled else "default"}
            pipe = build_pipeline(arch="sd15", size=size, seed=0)
            reset_peak(device)
            trainer = make_trainer(pipe, root=folder, hyperparameters=settings, device=device)
            started = time.perf_counter()
            trainer.setup()
            sync(device)
            RESULTS[f"{label}_setup_s"] = time.perf_counter() - started
            RESULTS.update(easel_step_times(trainer, device=device, batches=batches,
                                            warmup=warmup, repeat=repeat, label=label))
            if mode == "none" and device == "cuda" and args.contiguous_too:  # after the rest
                trainer.unet.to(memory_format=torch.contiguous_format)
                RESULTS.update(easel_step_times(trainer, device=device, batches=batches,
                                                warmup=warmup, repeat=repeat,
                                                label="easel_contiguous"))
                trainer.unet.to(memory_format=torch.channels_last)
            for batch in batches:
                stock = RESULTS.get(f"stock_s_per_step_bs{batch}")
                if stock:
                    RESULTS[f"{label}_speedup_bs{batch}"] = \
                        stock / RESULTS[f"{label}_s_per_step_bs{batch}"]
            eager = RESULTS.get("easel_eager_first_losses_bs1")
            if label != "easel_eager" and eager:
                mine = RESULTS[f"{label}_first_losses_bs1"]
                RESULTS[f"{label}_vs_eager_max_rel_loss_diff"] = max(
                    abs(a - b) / abs(b) for a, b in zip(mine, eager, strict=True))
            dump()
            if index == len(modes) - 1 and args.run_steps:
                run = easel_timed_run(trainer, device=device, steps=args.run_steps)
                RESULTS.update({f"{label}_{key}": value for key, value in run.items()})
                RESULTS[f"{label}_run_total_with_setup_s"] = (
                    RESULTS[f"{label}_setup_s"] + RESULTS[f"{label}_first_step_s_bs1"]
                    + run["run_train_s"] + run["run_save_s"])
                dump()
            del trainer, pipe


if __name__ == "__main__":
    main()
