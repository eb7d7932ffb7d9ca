"""txt2img / img2img in A1111 shapes: one call = n_iter batches, seeds, images, info."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import torch
from easel_contracts.infotext import format_infotext
from easel_contracts.invocations import (
    MAX_SEED,
    ControlNetUse,
    GenerationInfo,
    GenerationRequest,
    GenerationResponse,
    GenerationTimings,
    Img2ImgRequest,
    LoraUse,
)
from PIL import Image, ImageFilter

from .controlnet import control_images, controlnet_pipeline
from .errors import BadRequest, Unavailable
from .images import decode_image, encode_png
from .lora import LoraLibrary, parse_lora_tags
from .pipelines import LoadedModel, PipelineManager
from .progress import StepReport
from .prompts import encode_prompt_pair
from .samplers import make_scheduler, resolve_sampler, seed_scheduler_noise
from .settings import Settings

StepHook = Callable[[int], None]
StopCheck = Callable[[str], None]
"""Raises if the work must stop where the argument says it is (deadline passed, client left)."""
OOM_ERRORS: tuple[type[BaseException], ...] = (torch.OutOfMemoryError,)


def _seeds(request: GenerationRequest) -> list[int]:
    first = request.seed if request.seed != -1 else random.randint(0, MAX_SEED)
    return [(first + index) % (MAX_SEED + 1) for index in range(request.batch_size * request.n_iter)]


def _check_budget(request: GenerationRequest, settings: Settings) -> None:
    pixels = request.width * request.height * request.batch_size
    if pixels > settings.max_pixels:
        raise BadRequest(
            f"width x height x batch_size = {pixels} pixels exceeds the budget of "
            f"{settings.max_pixels} (EASEL_MAX_PIXELS)",
            field="width",
        )


def _infotext(request: GenerationRequest, seed: int, sampler: str, karras: bool,
              model: LoadedModel, vae: str | None) -> str:
    """A1111's infotext of one image (its PNG's `parameters` chunk and `info.infotexts`); the
    prompt keeps its `<lora:name:weight>` tags, as A1111's does."""
    clip_skip = request.clip_skip or request.override_settings.CLIP_stop_at_last_layers
    return format_infotext(request.prompt, request.negative_prompt, {
        "Steps": request.steps, "Sampler": sampler,
        "Schedule type": "Karras" if karras else None,
        "CFG scale": float(request.cfg_scale), "Seed": seed,
        "Size": f"{request.width}x{request.height}", "Model hash": model.short_hash,
        "Model": model.name, "VAE": vae,
        "Denoising strength": (float(request.denoising_strength)
                               if isinstance(request, Img2ImgRequest) else None),
        "Clip skip": clip_skip if clip_skip and clip_skip > 1 else None,
    })


def _step_callback(hook: StepHook | None, stop: StopCheck | None,
                   where: Callable[[int], str],
                   report: Callable[[int, Any], None] | None = None,
                   ) -> Callable[..., dict[str, Any]]:
    def on_step_end(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if hook is not None:
            hook(step)
        if report is not None:  # the step event (and preview) of a streamed request
            report(step, kwargs.get("latents"))
        if stop is not None:
            stop(where(step))
        return kwargs

    return on_step_end


def _img2img_inputs(request: Img2ImgRequest, settings: Settings) -> dict[str, Any]:
    init = decode_image(request.init_images[0], field="init_images[0]",
                        max_bytes=settings.max_image_bytes)
    size = (request.width, request.height)
    inputs: dict[str, Any] = {"image": init.convert("RGB").resize(size, Image.LANCZOS),
                              "strength": request.denoising_strength}
    if request.mask:
        mask = decode_image(request.mask, field="mask", max_bytes=settings.max_image_bytes)
        mask = mask.convert("L").resize(size, Image.LANCZOS)
        if request.inpainting_mask_invert:
            mask = Image.eval(mask, lambda value: 255 - value)
        if request.mask_blur:
            mask = mask.filter(ImageFilter.GaussianBlur(request.mask_blur))
        inputs["mask_image"] = mask
    return inputs


def _overlay(image: Image.Image, overlay: tuple[Image.Image, Image.Image] | None) -> Image.Image:
    if overlay is None:
        return image
    init, mask = overlay
    return Image.composite(image.convert("RGB"), init, mask)


def _inpainting_model_inputs(request: GenerationRequest, extra: dict[str, Any]) -> dict[str, Any]:
    """txt2img / img2img on an inpainting checkpoint (9-channel UNet), as A1111 does: the whole
    image is the mask, so the masked-image conditioning is empty; txt2img starts from noise."""
    size = (request.width, request.height)
    inputs = dict(extra)
    inputs["mask_image"] = Image.new("L", size, 255)
    if "image" not in inputs:
        inputs["image"] = Image.new("RGB", size, (127, 127, 127))
        inputs["strength"] = 1.0
    return inputs


def _task_pipeline(model: LoadedModel, kind: str) -> Any:
    from diffusers import (
        AutoPipelineForImage2Image,
        AutoPipelineForInpainting,
    )

    if kind == "txt2img":
        return model.pipe
    if kind == "img2img":
        return model.variant("img2img", AutoPipelineForImage2Image.from_pipe)
    return model.variant("inpaint", AutoPipelineForInpainting.from_pipe)


def generate(
    request: GenerationRequest,
    *,
    task: str,
    manager: PipelineManager,
    library: LoraLibrary,
    settings: Settings,
    step_hook: StepHook | None = None,
    stop: StopCheck | None = None,
    queued_at: float | None = None,
    report: StepReport | None = None,
) -> GenerationResponse:
    """Run one A1111 request; GPU out-of-memory (loading or generating) becomes a 503. ``stop``
    is asked before the work starts, before each batch and after each step; ``report`` (a
    streamed request) hears of each step before that check."""
    try:
        return _generate(request, manager=manager, library=library, settings=settings,
                         step_hook=step_hook, stop=stop, queued_at=queued_at, report=report)
    except OOM_ERRORS as exc:
        manager.restore_all_loras()
        manager.release_memory()
        raise Unavailable(
            "the GPU ran out of memory for this request; try a smaller size, batch_size or "
            "fewer ControlNets (the server keeps serving)"
        ) from exc


def _generate(
    request: GenerationRequest,
    *,
    manager: PipelineManager,
    library: LoraLibrary,
    settings: Settings,
    step_hook: StepHook | None,
    stop: StopCheck | None,
    queued_at: float | None,
    report: StepReport | None = None,
) -> GenerationResponse:
    started = time.perf_counter()
    if stop is not None:
        stop("before it started (it waited in the queue)")
    _check_budget(request, settings)
    sampler, karras = resolve_sampler(request.sampler_name or request.sampler_index,
                                      request.scheduler)
    prompt, loras = parse_lora_tags(request.prompt)
    units = request.controlnet_units()
    extra: dict[str, Any] = {}
    kind = "txt2img"
    if isinstance(request, Img2ImgRequest):
        extra = _img2img_inputs(request, settings)
        kind = "inpaint" if "mask_image" in extra else "img2img"
    model = manager.get(request.override_settings.sd_model_checkpoint)
    load_done = time.perf_counter()
    if model.is_inpainting and kind != "inpaint":
        extra, kind = _inpainting_model_inputs(request, extra), "inpaint"
    if units:
        if kind == "inpaint":  # no ControlNet variant of the inpainting pipelines here
            if model.is_inpainting:
                raise BadRequest(f"{model.name} is an inpainting checkpoint; ControlNet needs "
                                 "a regular one", field="alwayson_scripts")
            raise BadRequest("ControlNet with an inpainting mask is not supported", field="mask")
        pipe = controlnet_pipeline(model, manager, units, kind=kind)
        extra.update(control_images(units, request, settings, img2img=kind == "img2img"))
    else:
        pipe = _task_pipeline(model, kind)
    sampler_label = sampler.name + (" Karras" if karras else "")
    pipe.scheduler = make_scheduler(model.base_scheduler_config, sampler, karras=karras)
    if request.eta is not None and "eta" in pipe.scheduler.step.__code__.co_varnames:
        extra["eta"] = request.eta
    steps = request.steps
    strength = extra.get("strength")
    if strength is not None and int(steps * strength) < 1:
        # diffusers runs int(steps * strength) steps; run at least one, as A1111 does
        steps = math.ceil(1 / max(strength, 0.01))
    runs = max(1, int(steps * strength)) if strength is not None else steps  # steps it runs
    seeds = _seeds(request)
    images: list[str] = []
    # a user's mask: pixels outside it are the init image's, exactly (A1111's overlay)
    overlay = (extra["image"], extra["mask_image"]) if getattr(request, "mask", None) else None
    vae = manager.vae(request.override_settings.sd_vae, model)
    vae_name = request.override_settings.sd_vae if vae is not None else None
    infotexts = [_infotext(request, seed, sampler.name, karras, model, vae_name) for seed in seeds]
    original_vae = pipe.vae
    model.fuser.apply(loras, library)
    clip_skip = request.clip_skip or request.override_settings.CLIP_stop_at_last_layers
    embeds = encode_prompt_pair(pipe, prompt, request.negative_prompt,
                                clip_skip=clip_skip, device=manager.device)
    try:
        if vae is not None:
            pipe.vae = vae
        for iteration in range(request.n_iter):
            if stop is not None and iteration:
                stop(f"before batch {iteration + 1} of {request.n_iter}")
            batch_seeds = seeds[iteration * request.batch_size:(iteration + 1) * request.batch_size]
            generators = [torch.Generator("cpu").manual_seed(seed) for seed in batch_seeds]
            seed_scheduler_noise(pipe.scheduler, batch_seeds)
            result = pipe(
                **embeds,
                num_images_per_prompt=request.batch_size,
                num_inference_steps=steps,
                guidance_scale=request.cfg_scale,
                width=request.width,
                height=request.height,
                generator=generators,
                callback_on_step_end=_step_callback(
                    step_hook, stop,
                    lambda step, batch=iteration + 1: (
                        f"after step {step + 1} of {runs} (batch {batch} of {request.n_iter})"),
                    None if report is None else (
                        lambda step, latents, batch=iteration + 1:
                        report(step + 1, runs, batch, request.n_iter, latents))),
                **extra,
            )
            for image in result.images:
                images.append(encode_png(_overlay(image, overlay),
                                         parameters=infotexts[len(images)]))
    finally:
        pipe.vae = original_vae
    finished = time.perf_counter()
    info = GenerationInfo(
        prompt=request.prompt,
        all_prompts=[request.prompt] * len(seeds),
        negative_prompt=request.negative_prompt,
        all_negative_prompts=[request.negative_prompt] * len(seeds),
        seed=seeds[0],
        all_seeds=seeds,
        subseed=-1,
        all_subseeds=[-1] * len(seeds),
        width=request.width,
        height=request.height,
        sampler_name=sampler_label,
        scheduler="Karras" if karras else "Automatic",
        cfg_scale=request.cfg_scale,
        steps=request.steps,
        batch_size=request.batch_size,
        n_iter=request.n_iter,
        sd_model_name=model.name,
        sd_model_hash=model.short_hash,
        sd_vae_name=request.override_settings.sd_vae if vae is not None else None,
        denoising_strength=getattr(request, "denoising_strength", None),
        clip_skip=request.clip_skip or 1,
        loras=[LoraUse(name=u.name, te=u.text_weight, unet=u.unet_weight) for u in loras],
        controlnet=[ControlNetUse(module=u.module, model=u.model, weight=u.weight) for u in units],
        index_of_first_image=0,
        infotexts=infotexts,
        job_timestamp=datetime.now(UTC).strftime("%Y%m%d%H%M%S"),
        is_using_inpainting_conditioning=kind == "inpaint",
        timings=GenerationTimings(
            queue_seconds=round(started - queued_at, 4) if queued_at else 0.0,
            model_seconds=round(load_done - started, 4),
            generation_seconds=round(finished - load_done, 4),
            total_seconds=round(finished - (queued_at or started), 4),
        ),
    )
    return GenerationResponse(
        images=images,
        parameters=request.model_dump(mode="json", exclude={"init_images", "mask"}),
        info=info.model_dump_json(),
    )
