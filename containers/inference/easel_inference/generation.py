"""txt2img / img2img in A1111 shapes: one call = n_iter batches, seeds, images, info."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

import torch
from easel_contracts.families import FAMILIES, ModelFamily
from easel_contracts.infotext import format_infotext
from easel_contracts.invocations import (
    HR_UPSCALERS,
    IMAGE_UPSCALERS,
    LATENT_UPSCALERS,
    MAX_SEED,
    ControlNetUse,
    GenerationInfo,
    GenerationRequest,
    GenerationResponse,
    GenerationTimings,
    Img2ImgRequest,
    LoraUse,
    Txt2ImgRequest,
    family_request,
)
from PIL import Image, ImageFilter

from .controlnet import control_images, controlnet_pipeline
from .errors import BadRequest, Unavailable
from .images import decode_image, encode_png_later
from .lora import LoraLibrary, parse_lora_tags
from .mask_area import masked_area
from .pipelines import LoadedModel, PipelineManager, native_side
from .progress import StepReport
from .prompts import encode_prompt_pair
from .samplers import (
    make_scheduler,
    resolve_flow_sampler,
    resolve_sampler,
    seed_scheduler_noise,
)
from .settings import Settings
from .upscalers import UpscalerSet

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
    if isinstance(request, Txt2ImgRequest) and request.enable_hr:
        width, height = request.hires_size()
        pixels = width * height * request.batch_size
        if pixels > settings.max_pixels:
            raise BadRequest(
                f"the hires size {width}x{height} x batch_size = {pixels} pixels exceeds the "
                f"budget of {settings.max_pixels} (EASEL_MAX_PIXELS); lower hr_scale, "
                "hr_resize_x/hr_resize_y or batch_size",
                field="hr_scale",
            )


def _run_steps(steps: int, strength: float) -> tuple[int, int]:
    """(steps to schedule, steps diffusers runs) of an img2img pass: it runs
    int(steps x strength) of them; at least one, as A1111 does."""
    if int(steps * strength) < 1:
        steps = math.ceil(1 / max(strength, 0.01))
    return steps, max(1, int(steps * strength))


def _upscale_latents(latents: torch.Tensor, size: tuple[int, int], upscaler: str, *,
                     factor: int) -> torch.Tensor:
    """A1111's latent upscalers: the first pass's latents interpolated to the hires size over
    the VAE's scale ``factor`` (8 for Stable Diffusion's)."""
    mode, antialias = LATENT_UPSCALERS[upscaler]
    return torch.nn.functional.interpolate(latents, size=(size[1] // factor, size[0] // factor),
                                           mode=mode, antialias=antialias)


def _infotext(request: GenerationRequest, seed: int, sampler: str, karras: bool,
              model: LoadedModel, vae: str | None, *, hires: bool = False) -> str:
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
                               if isinstance(request, Img2ImgRequest) or hires else None),
        "Clip skip": clip_skip if clip_skip and clip_skip > 1 else None,
        "Refiner": request.refiner_checkpoint,
        "Refiner switch at": request.refiner_switch_at if request.refiner_checkpoint else None,
        **_hires_infotext(request if hires else None),
    })


def _hires_infotext(request: Txt2ImgRequest | None) -> dict[str, object]:
    """The hires settings as A1111 writes them (``Hires resize`` only for an explicit size,
    ``Hires steps`` only when set)."""
    if request is None:
        return {}
    resized = request.hr_resize_x or request.hr_resize_y
    return {
        "Hires upscale": None if resized else float(request.hr_scale),
        "Hires resize": "{}x{}".format(*request.hires_size()) if resized else None,
        "Hires steps": request.hr_second_pass_steps or None,
        "Hires upscaler": request.hr_upscaler,
    }


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


Finish = Callable[[Image.Image], Image.Image]
"""What becomes of each image the pipeline made before it is encoded (a mask's overlay)."""


def _img2img_inputs(request: Img2ImgRequest,
                    settings: Settings) -> tuple[dict[str, Any], Finish | None]:
    """The pipeline's image inputs, and with a mask the overlay that keeps the init image's
    pixels outside it (A1111's): over the whole image, or with ``inpaint_full_res`` the masked
    area's box repainted at the request's size and pasted back into the image at its own size."""
    init = decode_image(request.init_images[0], field="init_images[0]",
                        max_bytes=settings.max_image_bytes).convert("RGB")
    size = (request.width, request.height)
    inputs: dict[str, Any] = {"image": init.resize(size, Image.LANCZOS),
                              "strength": request.denoising_strength}
    if not request.mask:
        return inputs, None
    mask = decode_image(request.mask, field="mask", max_bytes=settings.max_image_bytes)
    mask = mask.convert("L").resize(init.size if request.inpaint_full_res else size,
                                    Image.LANCZOS)
    if request.inpainting_mask_invert:
        mask = Image.eval(mask, lambda value: 255 - value)
    if request.mask_blur:
        mask = mask.filter(ImageFilter.GaussianBlur(request.mask_blur))
    if request.inpaint_full_res:
        area = masked_area(init, mask, padding=request.inpaint_full_res_padding, size=size)
        if area is None:  # nothing painted: nothing to repaint, as A1111's empty mask
            mask = mask.resize(size, Image.LANCZOS)
        else:
            inputs["image"], inputs["mask_image"] = area.crop(size)
            return inputs, area.paste
    inputs["mask_image"] = mask
    image = inputs["image"]
    return inputs, lambda made: Image.composite(made.convert("RGB"), image, mask)


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


def model_request(request: GenerationRequest,
                  model: LoadedModel) -> tuple[GenerationRequest, list[str]]:
    """The request as ``model``'s family runs it (``family_request``) at the model's own
    native side."""
    return family_request(request, model.family, side=native_side(model.pipe))


def _refiner(request: GenerationRequest, model: LoadedModel, manager: PipelineManager, *,
             kind: str, controlnet: bool) -> LoadedModel | None:
    """The SDXL refiner a request names (A1111's ``refiner_checkpoint``), loaded beside the
    base model, or None; refused where it cannot take over the base's latents."""
    if not request.refiner_checkpoint:
        return None
    field = "refiner_checkpoint"
    if model.family is not ModelFamily.SDXL:
        raise BadRequest(f"refiner_checkpoint needs an SDXL base model; {model.name} is "
                         f"{FAMILIES[model.family].label}", field=field)
    if kind == "inpaint" or controlnet:
        raise BadRequest("refiner_checkpoint works with txt2img and img2img without a mask or "
                         "ControlNet", field=field)
    if manager.settings.pipeline_budget < 2:
        raise BadRequest("a refiner is loaded beside the base model: set "
                         "EASEL_PIPELINE_BUDGET to 2 or more", field=field)
    refiner = manager.get(request.refiner_checkpoint)
    manager.current = model.name  # the base stays the server's current model
    if refiner.family is not ModelFamily.SDXL_REFINER:
        raise BadRequest(f"refiner_checkpoint {refiner.name!r} is "
                         f"{FAMILIES[refiner.family].label}, not an SDXL refiner", field=field)
    return refiner


def _check_flow_size(request: GenerationRequest, model: LoadedModel) -> None:
    """SD3.5 and FLUX.1 cut the latents into 2x2 patches: sides must be multiples of twice the
    VAE's factor (16 for the released models)."""
    multiple = 2 * int(getattr(model.pipe, "vae_scale_factor", 8))
    for field in ("width", "height"):
        if getattr(request, field) % multiple:
            raise BadRequest(f"{field} must be a multiple of {multiple} for "
                             f"{FAMILIES[model.family].label} models", field=field)


def _flow_prompt_inputs(model: LoadedModel, prompt: str, negative: str,
                        clip_skip: int | None) -> dict[str, Any]:
    """SD3.5 / FLUX.1 prompts go to the pipeline as text: its own encoders (CLIP and T5) read
    them; A1111's attention syntax is not applied to them."""
    if model.family in (ModelFamily.SD35_MEDIUM, ModelFamily.SD35_LARGE):
        inputs: dict[str, Any] = {"prompt": prompt, "negative_prompt": negative}
        if clip_skip and clip_skip > 1:  # diffusers counts the layers skipped after the last
            inputs["clip_skip"] = clip_skip - 1
        return inputs
    # schnell was distilled with 256 T5 tokens, dev with 512 (the releases' pipelines)
    return {"prompt": prompt,
            "max_sequence_length": 256 if model.family is ModelFamily.FLUX_SCHNELL else 512}


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


def _hires_pass(pipe: Any, first: Any, request: Txt2ImgRequest, *, embeds: dict[str, Any],
                size: tuple[int, int], steps: int, seeds: list[int],
                callback: Callable[..., dict[str, Any]],
                upscalers: UpscalerSet | None = None, stop: StopCheck | None = None) -> Any:
    """A1111's hires fix second pass: the first pass's latents (a latent upscaler) or decoded
    images (Lanczos, or an ESRGAN model of ``upscalers``) upscaled to ``size``, then img2img
    over them at ``denoising_strength`` with the same seeds."""
    if request.hr_upscaler in LATENT_UPSCALERS:
        image: Any = _upscale_latents(first, size, request.hr_upscaler,
                                      factor=int(getattr(pipe, "vae_scale_factor", 8)))
    elif request.hr_upscaler in IMAGE_UPSCALERS or upscalers is None:
        image = [picture.convert("RGB").resize(size, Image.LANCZOS) for picture in first]
    else:
        image = [upscalers.upscale(picture.convert("RGB"), request.hr_upscaler, size,
                                   stop or (lambda _where: None)) for picture in first]
    seed_scheduler_noise(pipe.scheduler, seeds)
    return pipe(
        **embeds,
        image=image,
        strength=request.denoising_strength,
        num_images_per_prompt=request.batch_size,
        num_inference_steps=steps,
        guidance_scale=request.cfg_scale,
        generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
        callback_on_step_end=callback,
    )


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
    model = manager.get(request.override_settings.sd_model_checkpoint)
    load_done = time.perf_counter()
    if model.family is ModelFamily.SDXL_REFINER:
        raise BadRequest(f"{model.name} is an SDXL refiner, a second pass: name it in "
                         "refiner_checkpoint with an SDXL base model",
                         field="override_settings.sd_model_checkpoint")
    request, notes = model_request(request, model)
    _check_budget(request, settings)
    if model.is_flow:
        sampler, karras = resolve_flow_sampler(request.sampler_name or request.sampler_index,
                                               request.scheduler, model.family), False
        _check_flow_size(request, model)
    else:
        sampler, karras = resolve_sampler(request.sampler_name or request.sampler_index,
                                          request.scheduler)
    prompt, loras = parse_lora_tags(request.prompt)
    units = request.controlnet_units()
    extra: dict[str, Any] = {}
    finish: Finish | None = None
    kind = "txt2img"
    if isinstance(request, Img2ImgRequest):
        extra, finish = _img2img_inputs(request, settings)
        kind = "inpaint" if "mask_image" in extra else "img2img"
    if model.is_inpainting and kind != "inpaint":
        extra, kind = _inpainting_model_inputs(request, extra), "inpaint"
    if units:
        if model.is_flow:
            raise BadRequest(f"{model.name} is a {FAMILIES[model.family].label} model; "
                             "ControlNet is served for SD1.x, SD2.x and SDXL models only",
                             field="alwayson_scripts")
        if kind == "inpaint":  # no ControlNet variant of the inpainting pipelines here
            if model.is_inpainting:
                raise BadRequest(f"{model.name} is an inpainting checkpoint; ControlNet needs "
                                 "a regular one", field="alwayson_scripts")
            raise BadRequest("ControlNet with an inpainting mask is not supported", field="mask")
        pipe = controlnet_pipeline(model, manager, units, kind=kind)
        extra.update(control_images(units, request, settings, img2img=kind == "img2img"))
    else:
        pipe = _task_pipeline(model, kind)
    refiner = _refiner(request, model, manager, kind=kind, controlnet=bool(units))
    sampler_label = sampler.name + (" Karras" if karras else "")
    pipe.scheduler = make_scheduler(model.base_scheduler_config, sampler, karras=karras)
    if refiner is not None:
        refiner.pipe.scheduler = make_scheduler(refiner.base_scheduler_config, sampler,
                                                karras=karras)
    if request.eta is not None and "eta" in pipe.scheduler.step.__code__.co_varnames:
        extra["eta"] = request.eta
    steps = request.steps
    strength = extra.get("strength")
    runs = steps  # steps it runs
    if strength is not None:
        steps, runs = _run_steps(steps, strength)
    hires = isinstance(request, Txt2ImgRequest) and request.enable_hr
    hires_pipe = None
    hires_size = (request.width, request.height)
    hires_steps = hires_runs = 0
    if hires:
        if kind != "txt2img" or units:
            raise BadRequest("hires fix (enable_hr) needs a regular checkpoint without "
                             "ControlNet; turn one of them off", field="enable_hr")
        if refiner is not None or model.is_flow:
            raise BadRequest("hires fix (enable_hr) is served for SD1.x, SD2.x and SDXL without "
                             "a refiner; turn off enable_hr or refiner_checkpoint",
                             field="enable_hr")
        hires_pipe = _task_pipeline(model, "img2img")
        hires_pipe.scheduler = make_scheduler(model.base_scheduler_config, sampler,
                                              karras=karras)
        hires_size = request.hires_size()
        if request.hr_upscaler not in HR_UPSCALERS:  # an ESRGAN model: there, and loadable
            manager.upscalers.model(request.hr_upscaler, field="hr_upscaler",
                                    builtin=HR_UPSCALERS)
        hires_steps, hires_runs = _run_steps(request.hires_steps(), request.denoising_strength)
    total_runs = runs + hires_runs  # steps of one batch, both passes
    seeds = _seeds(request)
    encoding: list[Future[str]] = []
    vae = manager.vae(request.override_settings.sd_vae, model)
    vae_name = request.override_settings.sd_vae if vae is not None else None
    infotexts = [_infotext(request, seed, sampler.name, karras, model, vae_name, hires=hires)
                 for seed in seeds]
    original_vae = pipe.vae
    hires_vae = hires_pipe.vae if hires_pipe is not None else None
    model.fuser.apply(loras, library)
    clip_skip = request.clip_skip or request.override_settings.CLIP_stop_at_last_layers
    if model.is_flow:
        embeds = _flow_prompt_inputs(model, prompt, request.negative_prompt, clip_skip)
    else:
        embeds = encode_prompt_pair(pipe, prompt, request.negative_prompt,
                                    clip_skip=clip_skip, device=manager.device)
    try:
        if vae is not None:
            pipe.vae = vae
            if hires_pipe is not None:
                hires_pipe.vae = vae
        for iteration in range(request.n_iter):
            if stop is not None and iteration:
                stop(f"before batch {iteration + 1} of {request.n_iter}")
            batch_seeds = seeds[iteration * request.batch_size:(iteration + 1) * request.batch_size]
            generators = [torch.Generator("cpu").manual_seed(seed) for seed in batch_seeds]
            seed_scheduler_noise(pipe.scheduler, batch_seeds)
            callback = _step_callback(
                step_hook, stop,
                lambda step, batch=iteration + 1: (
                    f"after step {step + 1} of {total_runs} (batch {batch} of {request.n_iter})"),
                None if report is None else (
                    lambda step, latents, batch=iteration + 1:
                    report(step + 1, total_runs, batch, request.n_iter, latents)))
            second_pass = {} if refiner is None else {
                "denoising_end": request.refiner_switch_at, "output_type": "latent"}
            latent_hires = hires and request.hr_upscaler in LATENT_UPSCALERS
            result = pipe(
                **embeds,
                num_images_per_prompt=request.batch_size,
                num_inference_steps=steps,
                guidance_scale=request.cfg_scale,
                width=request.width,
                height=request.height,
                generator=generators,
                callback_on_step_end=callback,
                **({"output_type": "latent"} if latent_hires else {}),
                **extra,
                **second_pass,
            )
            if refiner is not None:  # A1111's refiner: the last steps, from the base's latents
                result = refiner.pipe(
                    prompt=[prompt] * request.batch_size,
                    negative_prompt=[request.negative_prompt] * request.batch_size,
                    image=result.images, num_inference_steps=steps,
                    denoising_start=request.refiner_switch_at,
                    guidance_scale=request.cfg_scale, generator=generators,
                    callback_on_step_end=callback)
            if hires_pipe is not None:
                result = _hires_pass(
                    hires_pipe, result.images, request, embeds=embeds, size=hires_size,
                    steps=hires_steps, seeds=batch_seeds, upscalers=manager.upscalers,
                    stop=stop, callback=_step_callback(
                        step_hook, stop,
                        lambda step, batch=iteration + 1: (
                            f"after step {runs + step + 1} of {total_runs} "
                            f"(batch {batch} of {request.n_iter}, hires pass)"),
                        None if report is None else (
                            lambda step, latents, batch=iteration + 1:
                            report(runs + step + 1, total_runs, batch, request.n_iter,
                                   latents))))
            for image in result.images:  # encoded while the next batch denoises
                encoding.append(encode_png_later(finish(image) if finish else image,
                                                 parameters=infotexts[len(encoding)]))
        images = [pending.result() for pending in encoding]
    finally:
        pipe.vae = original_vae
        if hires_pipe is not None:
            hires_pipe.vae = hires_vae
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
        denoising_strength=(request.denoising_strength
                            if isinstance(request, Img2ImgRequest) or hires else None),
        clip_skip=request.clip_skip or 1,
        loras=[LoraUse(name=u.name, te=u.text_weight, unet=u.unet_weight) for u in loras],
        controlnet=[ControlNetUse(module=u.module, model=u.model, weight=u.weight) for u in units],
        index_of_first_image=0,
        infotexts=infotexts,
        job_timestamp=datetime.now(UTC).strftime("%Y%m%d%H%M%S"),
        is_using_inpainting_conditioning=kind == "inpaint",
        notes=notes,
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
