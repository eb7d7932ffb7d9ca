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
  --modes picks the variants timed: none (eager), graphs (the CUDA-graph step), a torch.compile
  mode, or graphs+MODE (compiled inside the captured step); MODE@SCOPE picks what is compiled:
  @model (the default: the whole UNet forward) or @blocks (each repeated UNet block, compiled
  once per distinct block), e.g. --modes graphs,graphs+default,graphs+default@blocks.
- easel_1000_steps: a whole job's training part (setup with latent/prompt caching, 1,000 steps,
  checkpoints every 250 steps, result saved), excluding the model build/load; previews off.

Prints JSON (and writes $OUT/training_bench.json when OUT is set): s/step, images/s, peak GPU
memory and the easel/stock ratios. `--quick` runs the same code on the CPU with the tiny model.

  PYTHONPATH=containers/inference:containers/training python bench/training.py [--modes ...]

`--family sd35|sd35_large|flux|flux_schnell` instead times the SD3.5/FLUX.1 LoRA step a job runs
(easel_training.flow.FlowTrainer: cached text embeddings, encoders freed, rectified flow) on the
full-size transformer and VAE with random weights, built on the GPU in bf16, at 1024² batch 1,
rank 16: setup time, s/step and peak GPU memory; `--gpu-gb 24` emulates a 24 GB card,
`--gradient-checkpointing` turns it on. With `--quick` it runs on the CPU with the tiny models.

  PYTHONPATH=... python bench/training.py --family flux --gradient-checkpointing --gpu-gb 48
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import typing
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timing import sync, timed

from easel_contracts.hyperparameters import CompileScope

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
def make_trainer(pipe, *, root: Path, hyperparameters: dict[str, str], device: str,
                 family: str = "sd1"):
    """The trainer a job would build for ``pipe`` (the family's trainer and defaults)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from easel_contracts.families import ModelFamily
    from easel_contracts.hyperparameters import HyperParameters
    from easel_training.base_model import BaseModel, describe_pipeline
    from easel_training.dataset import build_concept_data
    from easel_training.flow import make_trainer as family_trainer
    from easel_training.images import load_image_records
    from easel_training.paths import JobPaths
    from easel_training.stopping import StopRequest
    from easel_training.trainer import resolve_mixed_precision

    family = ModelFamily(family)
    hp = HyperParameters.from_strings(hyperparameters).for_family(family)
    paths = JobPaths(root)
    arch, prediction_type, native = describe_pipeline(pipe, family)
    base = BaseModel(name=f"bench-{family.value}", path=root / "bench.safetensors", pipe=pipe,
                     arch=arch, prediction_type=prediction_type, native_resolution=native,
                     family=family)
    records = load_image_records(paths.channel("concepts"), channel="concepts")
    data = build_concept_data(hp=hp, records=records, class_records=[],
                              resolution=hp.resolution or native)
    mixed = resolve_mixed_precision(hp.mixed_precision, cuda=device == "cuda")
    AcceleratorState._reset_state()
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision=mixed)
    return family_trainer(hp=hp, paths=paths, base=base, data=data, accelerator=accelerator,
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
    graphed = getattr(trainer, "graphed", None)
    results[f"{label}_cuda_graph_step"] = bool(graphed is not None and graphed.captured_any)
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


# ---- SD3.5 / FLUX.1 LoRA training at full size (--family) --------------------------------------
FAMILY_ALIASES = {"sd35": "sd35_medium", "flux": "flux_dev"}
# the released architectures (diffusers configs of stabilityai/stable-diffusion-3.5-* and
# black-forest-labs/FLUX.1-*), built with random weights
FULL_TRANSFORMERS = {
    "sd35_medium": dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16,
                        num_layers=24, attention_head_dim=64, num_attention_heads=24,
                        joint_attention_dim=4096, caption_projection_dim=1536,
                        pooled_projection_dim=2048, pos_embed_max_size=384,
                        dual_attention_layers=tuple(range(13)), qk_norm="rms_norm"),
    "sd35_large": dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16,
                       num_layers=38, attention_head_dim=64, num_attention_heads=38,
                       joint_attention_dim=4096, caption_projection_dim=2432,
                       pooled_projection_dim=2048, pos_embed_max_size=192, qk_norm="rms_norm"),
    "flux_dev": dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                     attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                     pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
}
FULL_TRANSFORMERS["flux_schnell"] = {**FULL_TRANSFORMERS["flux_dev"], "guidance_embeds": False}


def full_flow_pipeline(family: str, device: str):
    """A full-size SD3.5/FLUX.1 pipeline with random weights, built on the GPU in bf16: the
    transformer and VAE as released; text encoders of the released widths but one layer deep
    (the job encodes prompts once and frees the encoders before the first step, so their depth
    changes neither the step nor its peak; their own peak is the memory plan's estimate)."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        T5Config,
        T5EncoderModel,
    )

    from easel_inference.flow_builder import build_t5_tokenizer
    from easel_inference.tokenizer import build_clip_tokenizer

    flux = family.startswith("flux")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            transformer_class = FluxTransformer2DModel if flux else SD3Transformer2DModel
            transformer = transformer_class(**FULL_TRANSFORMERS[family])
            vae = AutoencoderKL(
                in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2,
                block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, sample_size=1024,
                use_quant_conv=False, use_post_quant_conv=False,
                scaling_factor=0.3611 if flux else 1.5305,
                shift_factor=0.1159 if flux else 0.0609)

            def clip(width: int, projection: bool):
                config = CLIPTextConfig(hidden_size=width, intermediate_size=4 * width,
                                        num_hidden_layers=1, num_attention_heads=width // 64,
                                        projection_dim=width, max_position_embeddings=77)
                return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)

            t5_tokenizer = build_t5_tokenizer()
            t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer), d_model=4096, d_kv=64,
                                         d_ff=10240, num_layers=1, num_heads=64,
                                         pad_token_id=t5_tokenizer.pad_token_id,
                                         eos_token_id=t5_tokenizer.eos_token_id))
    finally:
        torch.set_default_dtype(previous)
    if flux:
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=family == "flux_dev", base_shift=0.5,
            max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
        return FluxPipeline(transformer=transformer, scheduler=scheduler, vae=vae,
                            text_encoder=clip(768, False), tokenizer=build_clip_tokenizer(),
                            text_encoder_2=t5, tokenizer_2=t5_tokenizer)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=clip(768, True), tokenizer=build_clip_tokenizer(),
        text_encoder_2=clip(1280, True), tokenizer_2=build_clip_tokenizer(pad_token="!"),
        text_encoder_3=t5, tokenizer_3=t5_tokenizer)


def full_sdxl_pipeline(*, size: str, device: str):
    """SDXL base with random weights, built on the GPU in bf16 (the trainer stores frozen
    weights in bf16, so the build never holds an fp32 copy an emulated card could not)."""
    from easel_inference.builder import build_pipeline

    if device == "cpu":
        return build_pipeline(arch="sdxl", size=size, seed=0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            return build_pipeline(arch="sdxl", size=size, seed=0)
    finally:
        torch.set_default_dtype(previous)


def run_family(args: argparse.Namespace) -> None:
    """LoRA step time and peak GPU memory of Easel's trainer for SDXL, SD3.5 or FLUX.1 at full
    size, one family a run."""
    from easel_inference.flow_builder import build_flow_pipeline

    family = FAMILY_ALIASES.get(args.family, args.family)
    device = "cpu" if args.quick else "cuda"
    resolution = 32 if args.quick else args.resolution
    warmup, repeat = (1, 2) if args.quick else (3, 10)
    RESULTS.update(family=family, resolution=resolution, rank=args.rank, images=8,
                   gradient_checkpointing=args.gradient_checkpointing,
                   device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
                   torch=torch.__version__)
    if device == "cuda" and args.gpu_gb:
        total = torch.cuda.get_device_properties(0).total_memory / 1e9
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.gpu_gb / total))
        RESULTS["emulated_gpu_gb"] = args.gpu_gb
    started = time.perf_counter()
    try:
        if family == "sdxl":
            pipe = full_sdxl_pipeline(size="tiny" if args.quick else "full", device=device)
        else:
            pipe = build_flow_pipeline(family) if args.quick else full_flow_pipeline(family,
                                                                                     device)
    except torch.OutOfMemoryError as exc:  # an emulated card too small for the weights
        RESULTS["out_of_memory"] = "building the model: " + str(exc).split("\n")[0][:300]
        dump()
        return
    sync(device)
    RESULTS["build_s"] = time.perf_counter() - started
    denoiser = getattr(pipe, "transformer", None) or pipe.unet
    RESULTS["denoiser_params_b"] = sum(p.numel() for p in denoiser.parameters()) / 1e9
    with tempfile.TemporaryDirectory(prefix="easel-train-bench-") as tmp:
        root = Path(tmp)
        write_concepts(root / "input" / "data" / "concepts", 8, resolution)
        settings = {"instance_prompt": "a photo of sks toy", "rank": str(args.rank),
                    "resolution": str(resolution), "max_train_steps": "1000",
                    "validation_steps": "0", "checkpointing_steps": "0",
                    "gradient_checkpointing": str(args.gradient_checkpointing).lower(),
                    "mixed_precision": "auto"}
        reset_peak(device)
        trainer = make_trainer(pipe, root=root, hyperparameters=settings, device=device,
                               family=family)
        started = time.perf_counter()
        try:
            trainer.setup()
            sync(device)
            RESULTS["setup_s"] = time.perf_counter() - started
            RESULTS["setup_peak_gb"] = peak_gb(device)
            RESULTS.update(easel_step_times(trainer, device=device, batches=[1],
                                            warmup=warmup, repeat=repeat, label="easel"))
        except torch.OutOfMemoryError as exc:
            RESULTS["out_of_memory"] = str(exc).split("\n")[0][:300]
        except RuntimeError as exc:  # e.g. a cuBLAS failure when its workspace does not fit
            RESULTS["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            RESULTS["peak_gb_before_error"] = peak_gb(device)
    dump()


def dynamo_graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def step_variant(mode: str) -> tuple[bool, str, str, str]:
    """--modes entry -> (CUDA-graph step, torch.compile mode or "", compile scope or "", result
    label). ``[graphs+]MODE[@SCOPE]``: SCOPE is ``model`` (the default: the whole forward) or
    ``blocks`` (each repeated UNet block compiled); the label ends with the scope."""
    variant, _, scope = mode.partition("@")
    graphs, _, compile_mode = variant.partition("+")
    if graphs != "graphs":  # a plain compile mode, or none
        graphs, compile_mode = "", "" if variant == "none" else variant
    if scope and scope not in typing.get_args(CompileScope):
        raise SystemExit(f"--modes {mode}: the compile scope is one of "
                         f"{', '.join(typing.get_args(CompileScope))}")
    if scope and not compile_mode:
        raise SystemExit(f"--modes {mode}: a compile scope needs a compile mode "
                         f"(e.g. graphs+default@{scope})")
    scope = (scope or "model") if compile_mode else ""
    words = [graphs, compile_mode and "compile", compile_mode.replace("-", "_"), scope]
    label = "easel_" + ("_".join(filter(None, words)) or "eager")
    return bool(graphs), compile_mode, scope, label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CPU smoke run on the tiny model")
    parser.add_argument("--modes", default="none,graphs",
                        help="comma-separated variants of Easel's step, each timed on a fresh "
                             "model: none (eager), graphs (CUDA-graph step, Easel's default on "
                             "a GPU), a torch.compile mode (default, reduce-overhead, "
                             "max-autotune-no-cudagraphs), or graphs+MODE (the compiled UNet "
                             "inside the captured step: graphs+default); a compile mode may end "
                             "in @model (default: the whole forward) or @blocks (each repeated "
                             "UNet block compiled), e.g. graphs+default@blocks; the whole run "
                             "uses the last")
    parser.add_argument("--run-steps", type=int, default=1000,
                        help="steps of the whole run (0 skips it)")
    parser.add_argument("--skip-stock", action="store_true")
    parser.add_argument("--contiguous-too", action="store_true",
                        help="also time the eager step without channels-last")
    parser.add_argument("--family", choices=["sdxl", *FAMILY_ALIASES, *FULL_TRANSFORMERS],
                        help="time Easel's SDXL/SD3.5/FLUX.1 LoRA step instead (full-size "
                             "architecture, random weights, bf16 on the GPU)")
    parser.add_argument("--resolution", type=int, default=1024, help="with --family")
    parser.add_argument("--rank", type=int, default=16, help="with --family")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="with --family")
    parser.add_argument("--gpu-gb", type=float, default=0.0,
                        help="with --family: emulate a card of this many GB "
                             "(torch.cuda.set_per_process_memory_fraction)")
    args = parser.parse_args()
    if args.family:
        run_family(args)
        return

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
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    variants = [step_variant(mode) for mode in modes]  # a misspelt mode stops before any work
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

        for index, (mode, (graphs, compile_mode, scope, label)) in enumerate(
                zip(modes, variants, strict=True)):
            folder = root / label
            folder.mkdir()
            (folder / "input").symlink_to(root / "input", target_is_directory=True)
            settings = {**base_settings, "cuda_graphs": str(graphs).lower(),
                        "compile": str(bool(compile_mode)).lower(),
                        "compile_mode": compile_mode or "default",
                        "compile_scope": scope or "model"}
            pipe = build_pipeline(arch="sd15", size=size, seed=0)
            reset_peak(device)
            torch._dynamo.reset()  # each compiled variant times its own compile, from nothing
            trainer = make_trainer(pipe, root=folder, hyperparameters=settings, device=device)
            started = time.perf_counter()
            trainer.setup()
            sync(device)
            RESULTS[f"{label}_setup_s"] = time.perf_counter() - started
            graphs_before = dynamo_graphs()
            RESULTS.update(easel_step_times(trainer, device=device, batches=batches,
                                            warmup=warmup, repeat=repeat, label=label))
            if compile_mode:  # how many graphs Dynamo compiled (regional: one per distinct block)
                RESULTS[f"{label}_compiled_graphs"] = dynamo_graphs() - graphs_before
            if mode == "none" and device == "cuda" and args.contiguous_too:  # after the rest
                trainer.denoiser.to(memory_format=torch.contiguous_format)
                RESULTS.update(easel_step_times(trainer, device=device, batches=batches,
                                                warmup=warmup, repeat=repeat,
                                                label="easel_contiguous"))
                trainer.denoiser.to(memory_format=torch.channels_last)
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
