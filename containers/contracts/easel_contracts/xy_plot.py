"""The X/Y plot of a txt2img request (Easel's form of A1111's "X/Y/Z plot" script): two axes,
each one setting with a list of values; the portal makes one image a cell (one invocation each)
and tiles them into a labelled grid. The browser's Generate page and API clients send it as
``xy_plot`` in the txt2img payload; the portal reads it (the model server never sees it)."""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from .invocations import MAX_SEED, Lora, Sampler, Txt2ImgRequest

MAX_AXIS_VALUES = 8
MAX_CELLS = 36
MAX_OFFERED_NAMES = 20
"""At most this many of the endpoint's names are listed when a plot value is not served."""
LORA_TAG = re.compile(r"<lora:([^:>]*)((?::[^:>]*){0,2})>")
"""A1111's LoRA tag in a prompt: ``<lora:name>``, ``<lora:name:weight>``,
``<lora:name:te:unet>``."""


class AxisType(StrEnum):
    CFG_SCALE = "cfg_scale"
    STEPS = "steps"
    SEED = "seed"
    SAMPLER = "sampler"
    LORA_WEIGHT = "lora_weight"


AXIS_LABELS = {
    AxisType.CFG_SCALE: "CFG scale",
    AxisType.STEPS: "Steps",
    AxisType.SEED: "Seed",
    AxisType.SAMPLER: "Sampler",
    AxisType.LORA_WEIGHT: "LoRA weight",
}


def _number(text: str, kind: type[int] | type[float], label: str) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ValueError(f"{label} value {text!r} is not {what}") from None
    if not math.isfinite(value):
        raise ValueError(f"{label} value {text!r} is not a finite number")
    return value


class XYAxis(BaseModel):
    """One axis: the setting it varies and its values (a list, or the form's comma list)."""

    model_config = ConfigDict(extra="forbid")

    type: AxisType
    values: list[str | int | float]

    @field_validator("values", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _typed(self) -> XYAxis:
        label = AXIS_LABELS[self.type]
        if not self.values:
            raise ValueError(f"{label}: give at least one value (a comma-separated list)")
        if len(self.values) > MAX_AXIS_VALUES:
            raise ValueError(f"{label}: {len(self.values)} values; at most {MAX_AXIS_VALUES} "
                             "an axis")
        texts = [str(value).strip() for value in self.values]
        if self.type is AxisType.SAMPLER:
            self.values = [text for text in texts if text]
        elif self.type in (AxisType.STEPS, AxisType.SEED):
            self.values = [_number(text, int, label) for text in texts]
        else:
            self.values = [_number(text, float, label) for text in texts]
        return self

    def label(self, value: str | int | float) -> str:
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        return f"{AXIS_LABELS[self.type]}: {shown}"


class XYPlot(BaseModel):
    model_config = ConfigDict(extra="forbid")

    x: XYAxis
    y: XYAxis

    @model_validator(mode="after")
    def _bounded(self) -> XYPlot:
        if self.x.type is self.y.type:
            raise ValueError(f"x and y both vary {AXIS_LABELS[self.x.type]}; pick two "
                             "different settings")
        cells = len(self.x.values) * len(self.y.values)
        if cells > MAX_CELLS:
            raise ValueError(f"{len(self.x.values)} x {len(self.y.values)} = {cells} images; "
                             f"at most {MAX_CELLS} a plot: give fewer values")
        return self

    @property
    def columns(self) -> int:
        return len(self.x.values)

    @property
    def rows(self) -> int:
        return len(self.y.values)


class PlotError(ValueError):
    """A plot its request cannot make, with the field to name."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class NotServed(PlotError):
    """A plot value the endpoint does not serve (a sampler it lacks, or the LoRA a LoRA weight
    axis varies), found from the endpoint's own listing before any cell runs."""


class FailedCell(BaseModel):
    """A cell whose invocation failed while the others were made: its place (``index``, row by
    row) and axis labels, and the reason. The portal keeps these in the job's state and in the
    answer's ``info`` (``failed_cells``); the grid draws the cell as a marked tile."""

    model_config = ConfigDict(extra="forbid")

    index: int
    x: str
    y: str
    error: str


def failed_cell(plot: XYPlot, index: int, error: str) -> FailedCell:
    """The ``FailedCell`` of cell ``index`` (row by row) with the reason, cut to 300 characters."""
    row, column = divmod(index, plot.columns)
    return FailedCell(index=index, x=plot.x.label(plot.x.values[column]),
                      y=plot.y.label(plot.y.values[row]), error=error[:300])


def _offered(names: list[str]) -> str:
    if not names:
        return "it serves none"
    shown = ", ".join(names[:MAX_OFFERED_NAMES])
    more = len(names) - MAX_OFFERED_NAMES
    return f"it serves: {shown}" + (f" and {more} more" if more > 0 else "")


def _check_served(request: Txt2ImgRequest, plot: XYPlot, samplers: Sequence[Sampler] | None,
                  loras: Sequence[Lora] | None) -> None:
    checkpoint = request.override_settings.sd_model_checkpoint
    model = f" for model {checkpoint!r}" if checkpoint else ""
    for side, axis in (("x", plot.x), ("y", plot.y)):
        if axis.type is AxisType.SAMPLER and samplers is not None:
            known = {name for sampler in samplers for name in (sampler.name, *sampler.aliases)}
            for value in axis.values:
                if value not in known:
                    raise NotServed(f"xy_plot.{side}", (
                        f"Sampler {value!r} is not served by this endpoint{model}; "
                        f"{_offered([sampler.name for sampler in samplers])}"))
        if axis.type is AxisType.LORA_WEIGHT and loras is not None:
            tag = LORA_TAG.search(request.prompt)
            name = tag.group(1).strip() if tag else ""
            if name not in {known for lora in loras for known in (lora.name, lora.alias)}:
                raise NotServed(f"xy_plot.{side}", (
                    f"LoRA {name!r} (the prompt's first <lora:...> tag, whose weight this axis "
                    f"varies) is not on this endpoint; {_offered([lora.name for lora in loras])}"
                ))


def _with_lora_weight(prompt: str, weight: float) -> str:
    tag = LORA_TAG.search(prompt)
    assert tag is not None  # checked by plot_requests
    return f"{prompt[:tag.start()]}<lora:{tag.group(1)}:{weight:g}>{prompt[tag.end():]}"


def _apply(request: Txt2ImgRequest, axis: XYAxis, value: str | int | float) -> dict[str, Any]:
    if axis.type is AxisType.CFG_SCALE:
        return {"cfg_scale": value}
    if axis.type is AxisType.STEPS:
        return {"steps": value}
    if axis.type is AxisType.SEED:
        return {"seed": value}
    if axis.type is AxisType.SAMPLER:
        return {"sampler_name": value}
    return {"prompt": _with_lora_weight(request.prompt, float(value))}


def plot_requests(request: Txt2ImgRequest, plot: XYPlot, *,
                  samplers: Sequence[Sampler] | None = None,
                  loras: Sequence[Lora] | None = None) -> list[Txt2ImgRequest]:
    """One request a cell, row by row (y outer, x inner), each checked against the invocation
    contract's bounds. A random seed (-1) is picked once, so every cell shares it unless the
    seed is an axis; a LoRA weight axis sets the weight of the prompt's first ``<lora:...>``.
    ``samplers`` and ``loras``, the endpoint's listings where known (``samplers``: those of the
    request's ``override_settings.sd_model_checkpoint`` where it names one), must hold every
    sampler value and the LoRA a weight axis varies (``NotServed`` if not); None is not
    checked."""
    if request.batch_size != 1 or request.n_iter != 1:
        raise PlotError("xy_plot", "a plot makes one image a cell: set batch_size and n_iter "
                                   "to 1")
    if AxisType.LORA_WEIGHT in (plot.x.type, plot.y.type) and not LORA_TAG.search(request.prompt):
        raise PlotError("xy_plot", "a LoRA weight axis needs a <lora:name:weight> tag in the "
                                   "prompt (its weight is the one varied)")
    _check_served(request, plot, samplers, loras)
    base = request
    if request.seed == -1:
        base = request.model_copy(update={"seed": random.randint(0, MAX_SEED)})
    fields = base.model_dump(exclude_unset=True)
    fields["seed"] = base.seed
    cells = []
    for y_value in plot.y.values:
        for x_value in plot.x.values:
            changes = {**_apply(base, plot.y, y_value), **_apply(base, plot.x, x_value)}
            try:
                cells.append(Txt2ImgRequest.model_validate({**fields, **changes}))
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in first.get("loc", ())) or "value"
                axis = plot.x if where in _apply(base, plot.x, x_value) else plot.y
                side = "x" if axis is plot.x else "y"
                value = x_value if axis is plot.x else y_value
                raise PlotError(f"xy_plot.{side}", f"{axis.label(value)} is out of bounds "
                                f"({where}: {first.get('msg', 'invalid')})") from None
    return cells


class PlottedTxt2Img(Txt2ImgRequest):
    """The portal's txt2img body: A1111's, plus Easel's ``xy_plot``. A1111's own script form
    (``script_name`` with ``script_args``) is refused, saying what to send instead."""

    xy_plot: XYPlot | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_scripts(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("script_name"):
            raise ValueError(
                f"script_name {str(value['script_name'])[:40]!r}: A1111's scripts are not run "
                "here; for an X/Y plot send xy_plot {x: {type, values}, y: {type, values}} "
                "(see the README's X/Y plot)")
        return value

    def generation(self) -> Txt2ImgRequest:
        """The request without the plot (what one invocation takes)."""
        return Txt2ImgRequest.model_validate(self.model_dump(exclude={"xy_plot"},
                                                             exclude_unset=True))


__all__ = ["AXIS_LABELS", "MAX_AXIS_VALUES", "MAX_CELLS", "MAX_OFFERED_NAMES", "AxisType",
           "FailedCell", "NotServed", "PlotError", "PlottedTxt2Img", "XYAxis", "XYPlot",
           "failed_cell", "plot_requests"]
