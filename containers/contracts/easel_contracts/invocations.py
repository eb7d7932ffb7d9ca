"""The inference server's ``POST /invocations`` contract: every task, its request and its answer.

The body is the envelope ``{"task": ..., "payload": {...}}``. ``txt2img`` and ``img2img`` take and
return the AUTOMATIC1111 ``/sdapi/v1`` shapes (``{"images": [base64 PNG], "parameters": {...},
"info": "<json string>"}``); the listing tasks take an empty payload (``samplers`` may name a
checkpoint) and answer what A1111 (or its LoRA / ControlNet extensions) answers on the matching
route. The portal validates requests
with these models before any GPU time is spent and parses the server's answers with them; the
server validates the same requests and builds its answers through the same models, so both sides
share one set of bounds and one wire shape.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .families import FAMILIES, ModelFamily
from .workcap import MeasuredSpeed

# --- bounds (one set, shared by the portal and the server)

MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 20000
MAX_STEPS = 150
MAX_CFG_SCALE = 30.0
MIN_SIDE = 64
MAX_SIDE = 4096
MAX_BATCH_SIZE = 8
MAX_N_ITER = 16
MAX_INIT_IMAGES = 8
MAX_CLIP_SKIP = 12
# enabled ControlNet units in one request (A1111's extension offers at most 10 slots; each unit
# holds a ControlNet's activations in GPU memory) and entries in its args list
MAX_CONTROLNET_UNITS = 4
MAX_CONTROLNET_ARGS = 16
# one input image: at most this many bytes once decoded (the server's EASEL_MAX_IMAGE_BYTES may
# lower it, not raise it); as base64 text, with room for a "data:image/...;base64," prefix
MAX_IMAGE_BYTES = 16 * 1024 * 1024
MAX_IMAGE_B64_CHARS = MAX_IMAGE_BYTES * 4 // 3 + 4 + 64
MAX_IMAGES = MAX_BATCH_SIZE * MAX_N_ITER
MAX_NAME_CHARS = 256
# "masked area only" inpainting: pixels of context kept around the mask's box (A1111's slider
# stops at 256)
MAX_INPAINT_PADDING = 256

_SAFE_NAME = re.compile(r"^[^/\\\x00]+$")
_A1111_HASH = re.compile(r"\s*\[[0-9a-fA-F]+\]$")


def check_name(value: str, *, what: str) -> str:
    """A model, VAE, ControlNet or LoRA name: no path separators, no parent references, no NUL."""
    if not value or not _SAFE_NAME.match(value) or value in (".", "..") or ".." in value:
        raise ValueError(f"{what} must be a plain name without path separators")
    return value


def _image_text(value: str | None, *, what: str) -> str | None:
    if value is not None and len(value) > MAX_IMAGE_B64_CHARS:
        raise ValueError(f"{what} must be base64 text of at most {MAX_IMAGE_B64_CHARS} characters")
    return value


def _plain_checkpoint(value: str, info: ValidationInfo) -> str:
    # A1111 titles look like "name.safetensors [hash]": keep the name
    return check_name(_A1111_HASH.sub("", value.strip()), what=info.field_name or "checkpoint")


CheckpointName = Annotated[str, Field(max_length=MAX_NAME_CHARS),
                           AfterValidator(_plain_checkpoint)]
"""A checkpoint as a request names it: its name, file name or A1111 title (``name.safetensors
[hash]``, the hash dropped), at most ``MAX_NAME_CHARS`` characters, no path."""


# --- requests


class OverrideSettings(BaseModel):
    """The A1111 options a request may override for itself."""

    model_config = ConfigDict(extra="ignore")

    sd_model_checkpoint: CheckpointName | None = None
    CLIP_stop_at_last_layers: int | None = Field(default=None, ge=1, le=MAX_CLIP_SKIP)
    sd_vae: str | None = Field(default=None, max_length=MAX_NAME_CHARS)

    @field_validator("sd_vae")
    @classmethod
    def _plain_vae(cls, value: str | None) -> str | None:
        if value is None or value.strip() in ("", "Automatic", "None"):
            return None
        return check_name(value.strip(), what="override_settings.sd_vae")


class ControlNetUnit(BaseModel):
    """One unit of the A1111 ControlNet extension's ``alwayson_scripts.controlnet.args``."""

    model_config = ConfigDict(extra="ignore")

    enabled: bool = True
    module: str = Field(default="canny", max_length=64)
    model: str = Field(default="", max_length=MAX_NAME_CHARS)
    weight: float = Field(default=1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    image: str | dict[str, Any] | None = None
    input_image: str | None = None
    threshold_a: float = Field(default=100.0, ge=0.0, le=255.0, allow_inf_nan=False)
    threshold_b: float = Field(default=200.0, ge=0.0, le=255.0, allow_inf_nan=False)
    guidance_start: float = Field(default=0.0, ge=0.0, le=1.0, allow_inf_nan=False)
    guidance_end: float = Field(default=1.0, ge=0.0, le=1.0, allow_inf_nan=False)

    @field_validator("model")
    @classmethod
    def _plain_model(cls, value: str) -> str:
        value = _A1111_HASH.sub("", value.strip())
        return check_name(value, what="controlnet model") if value else value

    @field_validator("input_image")
    @classmethod
    def _bounded_input(cls, value: str | None) -> str | None:
        return _image_text(value, what="controlnet input_image")

    @field_validator("image")
    @classmethod
    def _bounded_image(cls, value: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        inner = value.get("image") if isinstance(value, dict) else value
        if isinstance(inner, str):
            _image_text(inner, what="controlnet image")
        return value

    def image_b64(self) -> str | None:
        if isinstance(self.image, dict):
            image = self.image.get("image")
            return image if isinstance(image, str) else None
        return self.image or self.input_image


class GenerationRequest(BaseModel):
    """Fields shared by txt2img and img2img (A1111 ``/sdapi/v1`` names). Other A1111 fields are
    accepted and ignored, so stock clients that send them keep working."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    seed: int = Field(default=-1, ge=-1, le=MAX_SEED)
    sampler_name: str | None = Field(default=None, max_length=64)
    sampler_index: str | None = Field(default=None, max_length=64)
    scheduler: str | None = Field(default=None, max_length=64)
    steps: int = Field(default=20, ge=1, le=MAX_STEPS)
    cfg_scale: float = Field(default=7.0, ge=0.0, le=MAX_CFG_SCALE, allow_inf_nan=False)
    width: int = Field(default=512, ge=MIN_SIDE, le=MAX_SIDE)
    height: int = Field(default=512, ge=MIN_SIDE, le=MAX_SIDE)
    batch_size: int = Field(default=1, ge=1, le=MAX_BATCH_SIZE)
    n_iter: int = Field(default=1, ge=1, le=MAX_N_ITER)
    eta: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False)
    clip_skip: int | None = Field(default=None, ge=1, le=MAX_CLIP_SKIP)
    # A1111's SDXL refiner: a second model takes over for the last steps, from this fraction
    refiner_checkpoint: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    refiner_switch_at: float = Field(default=0.8, ge=0.0, le=1.0, allow_inf_nan=False)
    override_settings: OverrideSettings = Field(default_factory=OverrideSettings)
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_eight(cls, value: int) -> int:
        if value % 8:
            raise ValueError("must be a multiple of 8")
        return value

    @field_validator("refiner_checkpoint")
    @classmethod
    def _plain_refiner(cls, value: str | None) -> str | None:
        if value is None or value.strip() in ("", "None"):
            return None
        return check_name(_A1111_HASH.sub("", value.strip()), what="refiner_checkpoint")

    @model_validator(mode="after")
    def _refiner_switch(self) -> GenerationRequest:
        if self.refiner_checkpoint and not 0.0 < self.refiner_switch_at < 1.0:
            raise ValueError("refiner_switch_at must be between 0 and 1 (exclusive) when "
                             "refiner_checkpoint is set: the fraction of the steps after which "
                             "the refiner takes over")
        return self

    @field_validator("alwayson_scripts")
    @classmethod
    def _known_scripts(cls, value: dict[str, Any]) -> dict[str, Any]:
        _controlnet_units(value)
        return value

    def controlnet_units(self) -> list[ControlNetUnit]:
        """The enabled ControlNet units (``alwayson_scripts.controlnet.args``)."""
        return [unit for unit in _controlnet_units(self.alwayson_scripts) if unit.enabled]


def _controlnet_units(scripts: dict[str, Any]) -> list[ControlNetUnit]:
    script = scripts.get("controlnet") or scripts.get("ControlNet")
    if not script:
        return []
    args = script.get("args", []) if isinstance(script, dict) else None
    if not isinstance(args, list):
        raise ValueError("alwayson_scripts.controlnet.args must be a list")  # noqa: TRY004
    if len(args) > MAX_CONTROLNET_ARGS:
        raise ValueError(f"alwayson_scripts.controlnet.args: at most {MAX_CONTROLNET_ARGS} "
                         f"entries, got {len(args)}")
    units = []
    for index, arg in enumerate(args):
        if not isinstance(arg, dict):
            continue
        try:
            units.append(ControlNetUnit.model_validate(arg))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first.get("loc", ()))
            raise ValueError(f"controlnet args[{index}].{where}: {first.get('msg')}") from None
    enabled = sum(unit.enabled for unit in units)
    if enabled > MAX_CONTROLNET_UNITS:
        raise ValueError(f"alwayson_scripts.controlnet.args: at most {MAX_CONTROLNET_UNITS} "
                         f"enabled units, got {enabled}; disable or remove some")
    return units


# hires fix: A1111's latent upscalers (interpolation modes of the latents) and the PIL one
LATENT_UPSCALERS: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
IMAGE_UPSCALERS = ("Lanczos",)
HR_UPSCALERS = (*LATENT_UPSCALERS, *IMAGE_UPSCALERS)
MAX_HR_SCALE = 4.0


class Txt2ImgRequest(GenerationRequest):
    """txt2img, with A1111's hires fix: a first pass at ``width`` x ``height``, an upscale to
    ``hr_resize_x`` x ``hr_resize_y`` (or ``hr_scale`` times the size), then an img2img pass of
    ``hr_second_pass_steps`` (0: ``steps``) at ``denoising_strength``."""

    enable_hr: bool = False
    hr_scale: float = Field(default=2.0, ge=1.0, le=MAX_HR_SCALE, allow_inf_nan=False)
    hr_upscaler: str = Field(default="Latent", max_length=MAX_NAME_CHARS)
    hr_second_pass_steps: int = Field(default=0, ge=0, le=MAX_STEPS)
    hr_resize_x: int = Field(default=0, ge=0, le=MAX_SIDE)
    hr_resize_y: int = Field(default=0, ge=0, le=MAX_SIDE)
    denoising_strength: float = Field(default=0.7, ge=0.0, le=1.0, allow_inf_nan=False)

    @field_validator("hr_upscaler")
    @classmethod
    def _known_upscaler(cls, value: str, info: ValidationInfo) -> str:
        # checked only when used: a client may send its last upscaler with enable_hr off. Any
        # other name is an ESRGAN model of the server (ESRGAN/<name>); the server knows which
        if info.data.get("enable_hr") and value not in HR_UPSCALERS:
            check_name(value, what=f"hr_upscaler (one of {', '.join(HR_UPSCALERS)}, or an "
                                   "ESRGAN model's name)")
        return value

    @field_validator("hr_resize_x", "hr_resize_y")
    @classmethod
    def _resize_multiple_of_eight(cls, value: int) -> int:
        if value % 8:
            raise ValueError("must be a multiple of 8 (or 0: hr_scale decides)")
        return value

    @model_validator(mode="after")
    def _hires_target_in_bounds(self) -> Txt2ImgRequest:
        if self.enable_hr:
            width, height = self.hires_size()
            if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
                raise ValueError(
                    f"hr_scale: the hires size {width}x{height} must have sides of "
                    f"{MIN_SIDE}..{MAX_SIDE}; lower hr_scale or hr_resize_x/hr_resize_y")
        return self

    def hires_size(self) -> tuple[int, int]:
        """The second pass's width and height (multiples of 8), as A1111 picks them: both
        resize sides given, they win; one given, the other keeps the aspect; none, ``hr_scale``
        times the first pass's size."""
        x, y = self.hr_resize_x, self.hr_resize_y
        if x and y:
            return x, y
        if x:
            return x, int(self.height * x / self.width) // 8 * 8
        if y:
            return int(self.width * y / self.height) // 8 * 8, y
        return (int(self.width * self.hr_scale) // 8 * 8,
                int(self.height * self.hr_scale) // 8 * 8)

    def hires_steps(self) -> int:
        """The steps the second pass is scheduled over (``int(steps x strength)`` of them run)."""
        return self.hr_second_pass_steps or self.steps


class Img2ImgRequest(GenerationRequest):
    init_images: list[str] = Field(min_length=1, max_length=MAX_INIT_IMAGES)
    denoising_strength: float = Field(default=0.75, ge=0.0, le=1.0, allow_inf_nan=False)
    mask: str | None = None
    mask_blur: int = Field(default=4, ge=0, le=64)
    inpainting_mask_invert: int = Field(default=0, ge=0, le=1)
    inpainting_fill: int = Field(default=1, ge=0, le=3)
    inpaint_full_res: bool = False
    inpaint_full_res_padding: int = Field(default=32, ge=0, le=MAX_INPAINT_PADDING)

    @field_validator("init_images")
    @classmethod
    def _bounded_images(cls, value: list[str]) -> list[str]:
        for image in value:
            if not image:
                raise ValueError(
                    "an image is empty; send each image as a base64-encoded PNG or JPEG"
                )
            _image_text(image, what="each image")
        return value

    @field_validator("mask")
    @classmethod
    def _bounded_mask(cls, value: str | None) -> str | None:
        return _image_text(value, what="mask")


def family_request(request: GenerationRequest, family: ModelFamily | str, *,
                   side: int | None = None) -> tuple[GenerationRequest, list[str]]:
    """The request as a model of ``family`` runs it, and notes on what it changed or ignored.

    SD3.5 and FLUX.1 (the flow-matching families): fields the client left unset take the
    family's defaults (``side``, the model's native side, else the family's resolution; steps;
    guidance); FLUX.1 has no negative prompt (its guidance is distilled into the model) and
    schnell takes no guidance at all, so those are ignored with a note. SD1.x, SD2.x and SDXL
    keep A1111's request defaults, as A1111 does.
    """
    facts = FAMILIES[ModelFamily(family)]
    if facts.prediction != "flow":
        return request, []
    unset = set(type(request).model_fields) - request.model_fields_set
    update: dict[str, Any] = {}
    notes: list[str] = []
    if {"width", "height"} <= unset:
        update["width"] = update["height"] = side or facts.resolution
    if "steps" in unset:
        update["steps"] = facts.steps
    if facts.guidance_kind == "none":
        if "cfg_scale" not in unset and request.cfg_scale not in (0.0, 1.0):
            notes.append(f"{facts.label} takes no guidance; cfg_scale {request.cfg_scale:g} "
                         "was ignored")
        update["cfg_scale"] = 0.0
    elif "cfg_scale" in unset:
        update["cfg_scale"] = facts.guidance
    if facts.guidance_kind != "cfg" and request.negative_prompt.strip():
        notes.append(f"{facts.label} has no negative prompt (its guidance is distilled into "
                     "the model); negative_prompt was ignored")
        update["negative_prompt"] = ""
    return (request.model_copy(update=update) if update else request), notes


# extras (A1111's /sdapi/v1/extra-single-image): the resamplers every server has; ESRGAN models
# from the model's ESRGAN/ folder are listed by file stem beside them
EXTRAS_RESAMPLERS = ("None", "Lanczos", "Nearest")
MAX_UPSCALE = 4.0


class ExtrasSingleImageRequest(BaseModel):
    """A1111's ``/sdapi/v1/extra-single-image``: upscale one image by ``upscaling_resize``
    (``resize_mode`` 0) or to ``upscaling_resize_w`` x ``upscaling_resize_h`` (``resize_mode``
    1) with ``upscaler_1``. Face restoration and a second upscaler are not offered: their
    fields are accepted only at 0 (stock clients send them so)."""

    model_config = ConfigDict(extra="ignore")

    image: str = Field(min_length=1)
    resize_mode: int = Field(default=0, ge=0, le=1)
    upscaling_resize: float = Field(default=2.0, ge=1.0, le=MAX_UPSCALE, allow_inf_nan=False)
    upscaling_resize_w: int = Field(default=512, ge=0, le=MAX_SIDE)
    upscaling_resize_h: int = Field(default=512, ge=0, le=MAX_SIDE)
    upscaling_crop: bool = True
    upscaler_1: str = Field(default="None", max_length=MAX_NAME_CHARS)
    upscaler_2: str = Field(default="None", max_length=MAX_NAME_CHARS)
    extras_upscaler_2_visibility: float = Field(default=0.0, ge=0.0, le=1.0, allow_inf_nan=False)
    gfpgan_visibility: float = Field(default=0.0, ge=0.0, le=1.0, allow_inf_nan=False)
    codeformer_visibility: float = Field(default=0.0, ge=0.0, le=1.0, allow_inf_nan=False)

    @field_validator("image")
    @classmethod
    def _bounded_image(cls, value: str) -> str:
        return _image_text(value, what="image") or value

    @field_validator("upscaler_1", "upscaler_2")
    @classmethod
    def _plain_upscaler(cls, value: str, info: ValidationInfo) -> str:
        value = value.strip() or "None"
        return check_name(value, what=info.field_name or "upscaler")

    @model_validator(mode="after")
    def _offered_only(self) -> ExtrasSingleImageRequest:
        if self.gfpgan_visibility or self.codeformer_visibility:
            raise ValueError("face restoration (gfpgan_visibility, codeformer_visibility) is "
                             "not offered here; send 0")
        if self.extras_upscaler_2_visibility and self.upscaler_2 != "None":
            raise ValueError("a second upscaler is not offered here; send upscaler_2 \"None\" "
                             "or extras_upscaler_2_visibility 0")
        if self.resize_mode == 1 and not (self.upscaling_resize_w and self.upscaling_resize_h):
            raise ValueError("resize_mode 1 resizes to upscaling_resize_w x upscaling_resize_h: "
                             "give both (at least 1), or use resize_mode 0 with "
                             "upscaling_resize")
        return self

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """The answer's size for an input of ``width`` x ``height``."""
        if self.resize_mode == 1:
            return self.upscaling_resize_w, self.upscaling_resize_h
        return (max(1, round(width * self.upscaling_resize)),
                max(1, round(height * self.upscaling_resize)))


class ListingRequest(BaseModel):
    """A listing task's payload: empty, or naming a ``checkpoint`` of the endpoint (the form
    ``override_settings.sd_model_checkpoint`` takes). Only ``samplers`` reads it (the samplers
    that checkpoint's family takes); the other listings ignore it. Without it, ``samplers``
    lists what the endpoint's checkpoints take together."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: CheckpointName | None = None


# --- answers

_ANSWER = ConfigDict(extra="forbid")


class GenerationTimings(BaseModel):
    model_config = _ANSWER

    queue_seconds: float
    model_seconds: float
    generation_seconds: float
    total_seconds: float


class LoraUse(BaseModel):
    model_config = _ANSWER

    name: str
    te: float
    unet: float


class ControlNetUse(BaseModel):
    model_config = _ANSWER

    module: str
    model: str
    weight: float


class GenerationInfo(BaseModel):
    """What the ``info`` JSON string of a generation answer holds (A1111's processing info, plus
    the LoRAs, ControlNets and timings of this server)."""

    model_config = _ANSWER

    prompt: str
    all_prompts: list[str]
    negative_prompt: str
    all_negative_prompts: list[str]
    seed: int
    all_seeds: list[int]
    subseed: int
    all_subseeds: list[int]
    width: int
    height: int
    sampler_name: str
    scheduler: str
    cfg_scale: float
    steps: int
    batch_size: int
    n_iter: int
    sd_model_name: str
    sd_model_hash: str | None
    sd_vae_name: str | None
    denoising_strength: float | None
    clip_skip: int
    loras: list[LoraUse]
    controlnet: list[ControlNetUse]
    index_of_first_image: int
    infotexts: list[str]
    job_timestamp: str
    is_using_inpainting_conditioning: bool
    timings: GenerationTimings
    # what the server changed or ignored for the model's family (e.g. FLUX.1's negative prompt)
    notes: list[str] = Field(default_factory=list)


class GenerationResponse(BaseModel):
    """A1111's txt2img / img2img answer: base64 images, the request's parameters, and ``info``,
    a JSON object serialized as a string."""

    model_config = _ANSWER

    # the images, and the portal's grid of them first (A1111's return_grid)
    images: list[str] = Field(max_length=MAX_IMAGES + 1)
    parameters: dict[str, Any]
    info: str

    @field_validator("info")
    @classmethod
    def _json_object(cls, value: str) -> str:
        try:
            parsed = json.loads(value)
        except ValueError:
            raise ValueError("info must be a JSON object serialized as a string") from None
        if not isinstance(parsed, dict):
            raise ValueError("info must be a JSON object serialized as a string")
        return value


class SdModel(BaseModel):
    """One checkpoint (A1111 ``/sdapi/v1/sd-models``)."""

    model_config = _ANSWER

    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class SdModels(RootModel[list[SdModel]]):
    pass


class SdVae(BaseModel):
    """One VAE (A1111 ``/sdapi/v1/sd-vae``)."""

    model_config = _ANSWER

    model_name: str
    filename: str


class SdVaes(RootModel[list[SdVae]]):
    pass


class Lora(BaseModel):
    """One LoRA (A1111 ``/sdapi/v1/loras``): local to the model, or in the S3 library."""

    model_config = _ANSWER

    name: str
    alias: str
    path: str


class Loras(RootModel[list[Lora]]):
    pass


class ControlNetModels(BaseModel):
    """The A1111 ControlNet extension's ``/controlnet/model_list`` answer."""

    model_config = _ANSWER

    model_list: list[str]


class Sampler(BaseModel):
    """One sampler (A1111 ``/sdapi/v1/samplers``)."""

    model_config = _ANSWER

    name: str
    aliases: list[str]
    options: dict[str, str]


class Samplers(RootModel[list[Sampler]]):
    pass


class Scheduler(BaseModel):
    """One schedule type (A1111 ``/sdapi/v1/schedulers``)."""

    model_config = _ANSWER

    name: str
    label: str


class Schedulers(RootModel[list[Scheduler]]):
    pass


class ExtrasSingleImageResponse(BaseModel):
    """A1111's extras answer: the upscaled image (base64 PNG) and a line saying how."""

    model_config = _ANSWER

    image: str
    html_info: str


class Upscaler(BaseModel):
    """One upscaler (A1111 ``/sdapi/v1/upscalers``): a resampler, or an ESRGAN model file."""

    model_config = _ANSWER

    name: str
    model_name: str | None
    model_path: str | None
    model_url: str | None = None
    scale: float | None


class Upscalers(RootModel[list[Upscaler]]):
    pass


class WarmUp(BaseModel):
    model_config = _ANSWER

    model: str
    width: int
    height: int
    steps: int
    seconds: float


class Options(BaseModel):
    """The server's A1111 options (``/sdapi/v1/options``) and its serving facts."""

    model_config = _ANSWER

    sd_model_checkpoint: str | None
    sd_checkpoints_loaded: list[str]
    model_load_seconds: dict[str, float]
    CLIP_stop_at_last_layers: int
    sd_vae: str
    samples_format: str
    device: str
    dtype: str
    max_response_bytes: int
    pipeline_budget: int
    warmed_up: WarmUp | None
    # the work cap's inputs (easel_contracts.workcap): the speed timed at warm-up, the deadline
    speed: MeasuredSpeed | None = None
    deadline_seconds: float | None = None


# --- the registry


class TaskSpec(NamedTuple):
    request: type[BaseModel]
    response: type[BaseModel]


TASKS: dict[str, TaskSpec] = {
    "txt2img": TaskSpec(Txt2ImgRequest, GenerationResponse),
    "img2img": TaskSpec(Img2ImgRequest, GenerationResponse),
    "sd-models": TaskSpec(ListingRequest, SdModels),
    "sd-vae": TaskSpec(ListingRequest, SdVaes),
    "loras": TaskSpec(ListingRequest, Loras),
    "controlnet-models": TaskSpec(ListingRequest, ControlNetModels),
    "samplers": TaskSpec(ListingRequest, Samplers),
    "schedulers": TaskSpec(ListingRequest, Schedulers),
    "options": TaskSpec(ListingRequest, Options),
    "upscalers": TaskSpec(ListingRequest, Upscalers),
    "extra-single-image": TaskSpec(ExtrasSingleImageRequest, ExtrasSingleImageResponse),
}
GENERATION_TASKS = tuple(name for name, spec in TASKS.items()
                         if issubclass(spec.request, GenerationRequest))
LISTING_TASKS = tuple(name for name, spec in TASKS.items() if spec.request is ListingRequest)
# tasks that run on the GPU worker over one given image, outside generation's admission queue
IMAGE_TASKS = tuple(name for name, spec in TASKS.items()
                    if spec.request is ExtrasSingleImageRequest)

TaskName = Literal[tuple(TASKS)]  # type: ignore[valid-type]


class Invocation(BaseModel):
    """The ``POST /invocations`` body: a task from the registry and its payload."""

    model_config = ConfigDict(extra="forbid")

    task: TaskName
    payload: dict[str, Any] = Field(default_factory=dict)

    def request(self) -> BaseModel:
        """The payload validated by the task's request model (raises ``ValidationError``)."""
        return TASKS[self.task].request.model_validate(self.payload)


def invocation_body(task: str, request: BaseModel) -> bytes:
    """The JSON body that sends ``request`` as ``task`` (only the fields the caller set)."""
    spec = TASKS[task]
    if not isinstance(request, spec.request):
        raise TypeError(f"{task} takes a {spec.request.__name__}, not {type(request).__name__}")
    payload = request.model_dump(mode="json", exclude_unset=True)
    return json.dumps({"task": task, "payload": payload}).encode()


def parse_answer(task: str, raw: bytes | str) -> BaseModel:
    """The server's answer to ``task`` parsed by its response model (raises
    ``ValidationError``)."""
    return TASKS[task].response.model_validate_json(raw)
