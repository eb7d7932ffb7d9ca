"""The one rule for how much work a generation request may ask for: its deadline, its work, the
speed the server measured on its own device, and the refusal that says what to lower.

SageMaker tells the container nothing about deadlines, so the endpoint builder puts one in the
container's environment (``EASEL_DEADLINE_SECONDS``): a real-time endpoint must answer within
60 s, an asynchronous one within the ``InvocationTimeoutSeconds`` its invocations carry. The
server times a few steps at warm-up (``MeasuredSpeed``), estimates each request's seconds from
its ``Work`` and refuses up front what cannot finish by the deadline (``check_work``). The portal
reads the same speed record from the endpoint's ``options`` answer and can apply the same rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:  # invocations imports MeasuredSpeed from here for its options answer
    from .invocations import GenerationRequest

DEADLINE_ENV = "EASEL_DEADLINE_SECONDS"
# "A customer's model containers must respond to requests within 60 seconds."
# https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_runtime_InvokeEndpoint.html
REALTIME_INVOCATION_TIMEOUT_S = 60
# InvokeEndpointAsync's InvocationTimeoutSeconds: 1..3600 (default 900); the portal sends the max.
# https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_runtime_InvokeEndpointAsync.html
ASYNC_INVOCATION_TIMEOUT_MAX_S = 3600
# left for encoding the images and the trip back once the last step is done
DEADLINE_MARGIN_S = 5
# a ControlNet unit runs a copy of the UNet's encoder and middle block beside the UNet each
# step: about half a UNet's work
CONTROLNET_UNIT_COST = 0.5


def deadline_seconds(mode: Literal["realtime", "async"],
                     invocation_timeout_s: int | None = None) -> int:
    """The seconds a request has from its arrival at the container to its answer."""
    if mode == "realtime":
        return REALTIME_INVOCATION_TIMEOUT_S - DEADLINE_MARGIN_S
    timeout = invocation_timeout_s or ASYNC_INVOCATION_TIMEOUT_MAX_S
    if not 1 <= timeout <= ASYNC_INVOCATION_TIMEOUT_MAX_S:
        raise ValueError(f"invocation timeout must be 1..{ASYNC_INVOCATION_TIMEOUT_MAX_S} s, "
                         f"got {timeout}")
    return max(1, timeout - DEADLINE_MARGIN_S)


class Work(BaseModel):
    """What one request asks the device to do: the first pass, and a hires fix's second pass
    (``hires_pixels`` and ``hires_steps`` zero without one). The server answers no grid image
    (the portal draws it), so no pass for it here.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    pixels: int = Field(gt=0, description="width x height of one image")
    steps: int = Field(gt=0, description="denoising steps run for each image")
    images: int = Field(gt=0, description="batch_size x n_iter")
    controlnet_units: int = Field(ge=0)
    hires_pixels: int = Field(default=0, ge=0, description="width x height of the second pass")
    hires_steps: int = Field(default=0, ge=0, description="steps the second pass runs")

    @property
    def step_passes(self) -> float:
        """Denoising steps of all images, a ControlNet unit adding its share of a UNet pass."""
        return self.steps * self.images * (1 + CONTROLNET_UNIT_COST * self.controlnet_units)

    @property
    def pixel_images(self) -> int:
        """Pixels of work done once an image (prompt encoding, VAE decoding, PNG encoding)."""
        return self.pixels * self.images


def work_of(request: GenerationRequest) -> Work:
    from .invocations import Img2ImgRequest, Txt2ImgRequest

    steps = request.steps
    if isinstance(request, Img2ImgRequest):
        # diffusers runs int(steps x strength) of them; the server runs at least one
        steps = max(1, int(steps * request.denoising_strength))
    hires_pixels = hires_steps = 0
    if isinstance(request, Txt2ImgRequest) and request.enable_hr:
        width, height = request.hires_size()
        hires_pixels = width * height
        hires_steps = max(1, int(request.hires_steps() * request.denoising_strength))
    return Work(pixels=request.width * request.height, steps=steps,
                images=request.batch_size * request.n_iter,
                controlnet_units=len(request.controlnet_units()),
                hires_pixels=hires_pixels, hires_steps=hires_steps)


class MeasuredSpeed(BaseModel):
    """How fast this server's device runs its default model, timed at warm-up.

    A step over ``p`` pixels costs ``a p + b p^2`` seconds: convolutions grow with the pixels,
    self-attention with their square, so a size far above the one timed costs much more than
    its pixel count says. Two sizes are timed to tell ``a`` from ``b``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    device: str
    width: int
    height: int
    seconds_per_pixel_step: float = Field(ge=0, description="a")
    seconds_per_squared_pixel_step: float = Field(default=0.0, ge=0, description="b")
    seconds_per_pixel_image: float = Field(ge=0)

    @model_validator(mode="after")
    def _some_cost(self) -> MeasuredSpeed:
        if self.seconds_per_pixel_step <= 0 and self.seconds_per_squared_pixel_step <= 0:
            raise ValueError("a step must cost some time")
        return self

    def step_seconds(self, pixels: int) -> float:
        return (self.seconds_per_pixel_step * pixels
                + self.seconds_per_squared_pixel_step * pixels * pixels)

    def seconds_for(self, work: Work) -> float:
        seconds = (work.step_passes * self.step_seconds(work.pixels)
                   + work.pixel_images * self.seconds_per_pixel_image)
        if work.hires_steps:  # the second pass: its steps at its size, and a decode of it
            seconds += (work.hires_steps * work.images * self.step_seconds(work.hires_pixels)
                        + work.hires_pixels * work.images * self.seconds_per_pixel_image)
        return seconds


def speed_from_runs(*, model: str, device: str, width: int, height: int,
                    short: tuple[int, float], long: tuple[int, float] | None = None,
                    other: tuple[int, int, int, float] | None = None) -> MeasuredSpeed:
    """The speed from timed single-image runs: ``(steps, seconds)`` with fewer and with more
    steps at ``width`` x ``height``, and optionally ``(width, height, steps, seconds)`` at another
    size. The step difference gives the cost of a step, the rest the cost paid once an image;
    the other size tells how the step cost grows with the pixels. Without a long run (the CPU's
    warm-up, where every run costs seconds) all of a run's seconds count as step work: the work
    paid once an image is then charged at every step, an over-estimate.

    Timings are noisy: a pair where the longer run is no slower counts every second as step
    work, and a growth slower than the pixels counts as linear at the slower rate; both
    over-estimate, erring towards refusing."""
    few, few_s = short
    # no long run: as a long run no slower than the short one (the fallback below)
    many, many_s = long if long is not None else (few + 1, few_s)
    if not 0 < few < many:
        raise ValueError("the long run needs more steps than the short one")
    pixels = width * height
    step = (many_s - few_s) / (many - few)
    image = few_s - few * step
    if step <= 0 or image < 0:
        step, image = max(many_s / many, few_s / few, 1e-9), 0.0
    per_image = image / pixels
    linear, squared = step / pixels, 0.0
    if other is not None and other[0] * other[1] != pixels:
        other_pixels = other[0] * other[1]
        other_step = max((other[3] - per_image * other_pixels) / other[2], 1e-9)
        near, far = linear, other_step / other_pixels  # seconds a pixel-step at each size
        squared = (far - near) / (other_pixels - pixels)
        linear = near - squared * pixels
        if squared <= 0:
            linear, squared = max(near, far), 0.0
        elif linear < 0:
            linear = 0.0
            squared = max(step / pixels ** 2, other_step / other_pixels ** 2)
    return MeasuredSpeed(model=model, device=device, width=width, height=height,
                         seconds_per_pixel_step=linear, seconds_per_squared_pixel_step=squared,
                         seconds_per_pixel_image=per_image)


class WorkRefusal(BaseModel):
    """Why a generation request was refused before any work: ``TooMuchWork`` (400) cannot finish
    by the deadline even alone, lower what ``largest`` names; ``Busy`` (503, with
    ``Retry-After``) could, but not behind the work already queued."""

    model_config = ConfigDict(extra="forbid")

    error: Literal["TooMuchWork", "Busy"]
    detail: str
    field: str | None = None
    estimated_seconds: float
    deadline_seconds: float
    queued_seconds: float = 0.0
    retry_after_seconds: int | None = None
    largest: dict[str, int] = Field(
        default_factory=dict,
        description="the largest value of each named setting that fits alone, the others kept")


def _largest(fits: Callable[[int], bool], low: int, high: int) -> int | None:
    """The largest value in low..high for which ``fits`` holds (it holds below any value it
    holds for), or None."""
    if high < low or not fits(low):
        return None
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def _lower_suggestions(request: GenerationRequest, speed: MeasuredSpeed,
                       budget: float) -> dict[str, int]:
    from .invocations import MIN_SIDE

    def fits(**changes: int) -> bool:
        return speed.seconds_for(work_of(request.model_copy(update=changes))) <= budget

    largest: dict[str, int] = {}
    steps = _largest(lambda value: fits(steps=value), 1, request.steps - 1)
    if steps is not None:
        largest["steps"] = steps
    images = request.batch_size * request.n_iter
    count = _largest(lambda value: fits(batch_size=value, n_iter=1), 1, images - 1)
    if count is not None:
        largest["images"] = count
    longer = max(request.width, request.height)
    side = _largest(lambda value: fits(**_scaled(request, value)), MIN_SIDE // 8,
                    longer // 8 - 1)
    if side is not None:
        largest.update(_scaled(request, side))
    units = request.controlnet_units()
    if units:
        kept = _largest(lambda value: speed.seconds_for(
            work_of(request).model_copy(update={"controlnet_units": value})) <= budget,
            0, len(units) - 1)
        if kept is not None:
            largest["controlnet_units"] = kept
    return largest


def _scaled(request: GenerationRequest, longer_eighths: int) -> dict[str, int]:
    """Width and height with the longer side ``longer_eighths`` x 8, the aspect kept."""
    from .invocations import MAX_SIDE, MIN_SIDE

    longer = max(request.width, request.height)
    scale = longer_eighths * 8 / longer
    width = max(MIN_SIDE, min(MAX_SIDE, int(request.width * scale) // 8 * 8))
    height = max(MIN_SIDE, min(MAX_SIDE, int(request.height * scale) // 8 * 8))
    return {"width": width, "height": height}


def _describe(largest: dict[str, int]) -> str:
    parts = []
    if "steps" in largest:
        parts.append(f"steps to {largest['steps']}")
    if "images" in largest:
        parts.append(f"batch_size x n_iter to {largest['images']}")
    if "width" in largest:
        parts.append(f"width x height to {largest['width']}x{largest['height']}")
    if "controlnet_units" in largest:
        parts.append(f"ControlNet units to {largest['controlnet_units']}")
    return ", or ".join(parts)


def check_work(request: GenerationRequest, speed: MeasuredSpeed, *, deadline_s: float,
               queued_s: float = 0.0) -> WorkRefusal | None:
    """None if ``request`` can finish within ``deadline_s`` behind ``queued_s`` seconds of
    queued work at ``speed``; otherwise the refusal, saying what to lower or when to retry."""
    estimate = speed.seconds_for(work_of(request))
    if estimate > deadline_s:
        largest = _lower_suggestions(request, speed, deadline_s)
        lower = _describe(largest)
        detail = (
            f"this request needs about {estimate:.0f} s on this endpoint ({speed.device}, "
            f"timed at warm-up), more than its {deadline_s:g} s deadline"
            + (f"; lower {lower}" if lower else "; lower the size, steps and images")
            + ", or use an asynchronous endpoint (longer deadline)")
        first = next(iter(largest), "steps")
        return WorkRefusal(error="TooMuchWork", detail=detail,
                           field="width" if first == "height" else first,
                           estimated_seconds=round(estimate, 3), deadline_seconds=deadline_s,
                           queued_seconds=round(queued_s, 3), largest=largest)
    if estimate + queued_s > deadline_s:
        wait = max(1, math.ceil(estimate + queued_s - deadline_s))
        return WorkRefusal(
            error="Busy",
            detail=(f"the endpoint is busy: about {queued_s:.0f} s of work is ahead of this "
                    f"request, which needs about {estimate:.0f} s, and it must finish within "
                    f"{deadline_s:g} s; retry in {wait} s"),
            estimated_seconds=round(estimate, 3), deadline_seconds=deadline_s,
            queued_seconds=round(queued_s, 3), retry_after_seconds=wait)
    return None
