"""Map SageMaker's string hyperparameters onto one typed, validated argument set.

SageMaker hands every hyperparameter over as a string. Each field of :class:`HyperParameters`
carries its own bounds and help text in its dataclass metadata, so parsing, validation and the
README table come from one place. All problems are collected and reported together, each naming
the field, so a person can fix the job in one go.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from easel_training.errors import TrainingInputError

Mode = Literal["lora", "full"]
MixedPrecision = Literal["auto", "no", "fp16", "bf16"]
SavePrecision = Literal["fp16", "bf16", "fp32"]
LrScheduler = Literal["constant", "constant_with_warmup", "linear", "cosine"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]

AUTO = None  # marker for "derived from other settings or the base model"
_OUTPUT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
# SageMaker and its SDKs add bookkeeping keys of their own; they are not ours to validate.
_IGNORED_PREFIXES = ("sagemaker_", "_")
_MAX_PROMPT_CHARS = 2000


def _meta(help: str, **bounds: Any) -> dict[str, Any]:
    return {"help": help, **bounds}


@dataclass(frozen=True)
class HyperParameters:
    """Every setting of a training job. ``None`` means "derived" (see each help text)."""

    instance_prompt: str = field(
        default="",
        metadata=_meta(
            "Prompt for the concept images, e.g. `a photo of sks dog`. `[filewords]` is "
            "replaced by the image's caption (see Captions).",
            required=True, max_length=_MAX_PROMPT_CHARS,
        ),
    )
    mode: Mode = field(
        default="lora",
        metadata=_meta(
            "`lora` trains LoRA adapters; `full` fine-tunes the whole UNet (DreamBooth)."
        ),
    )
    checkpoint: str = field(
        default="",
        metadata=_meta(
            "Name of the base model inside the `model` channel (file or folder name without "
            "extension). Empty: the only model there.",
            max_length=200,
        ),
    )
    class_prompt: str = field(
        default="",
        metadata=_meta(
            "Prompt for the class images used by prior preservation, e.g. `a photo of a dog`. "
            "Required when `with_prior_preservation` is true.",
            max_length=_MAX_PROMPT_CHARS,
        ),
    )
    max_train_steps: int = field(
        default=1000,
        metadata=_meta(
            "Optimizer steps to train.",
            minimum=1, maximum=100_000,
        ),
    )
    learning_rate: float | None = field(
        default=AUTO,
        metadata=_meta(
            "Learning rate. Default 1e-4 for `lora`, 2e-6 for `full`.",
            minimum=0.0, maximum=1.0, exclusive_minimum=True,
        ),
    )
    text_encoder_learning_rate: float | None = field(
        default=AUTO,
        metadata=_meta(
            "Learning rate of the text encoder(s) when `train_text_encoder` is true. Default: "
            "`learning_rate`.",
            minimum=0.0, maximum=1.0, exclusive_minimum=True,
        ),
    )
    lr_scheduler: LrScheduler = field(
        default="constant",
        metadata=_meta(
            "Learning-rate schedule."
        ),
    )
    lr_warmup_steps: int = field(
        default=0,
        metadata=_meta(
            "Linear warm-up steps (for the `*warmup*`, `linear` and `cosine` schedules).",
            minimum=0, maximum=100_000,
        ),
    )
    rank: int = field(
        default=16,
        metadata=_meta(
            "LoRA rank (`lora` mode).",
            minimum=1, maximum=256,
        ),
    )
    alpha: float | None = field(
        default=AUTO,
        metadata=_meta(
            "LoRA alpha; the update is scaled by alpha/rank. Default: `rank` (scale 1).",
            minimum=0.0, maximum=1024.0, exclusive_minimum=True,
        ),
    )
    lora_dropout: float = field(
        default=0.0,
        metadata=_meta(
            "Dropout on the LoRA branch.",
            minimum=0.0, maximum=0.9,
        ),
    )
    resolution: int | None = field(
        default=AUTO,
        metadata=_meta(
            "Training resolution in pixels (square side, or the area of the buckets when "
            "`bucketing` is on). Default: the base model's native size (512 SD1.x, 768 SD2-v, 1024 "
            "SDXL). Multiple of 8.",
            minimum=32, maximum=2048, multiple_of=8,
        ),
    )
    min_image_side: int | None = field(
        default=AUTO,
        metadata=_meta(
            "Images whose shorter side is below this are rejected as too small. Default: half of "
            "`resolution`.",
            minimum=1, maximum=8192,
        ),
    )
    center_crop: bool = field(
        default=True,
        metadata=_meta(
            "Without bucketing: crop the middle of each image (true) or a random part per step "
            "(false)."
        ),
    )
    bucketing: bool = field(
        default=False,
        metadata=_meta(
            "Group images by aspect ratio into buckets of about `resolution`² pixels instead of "
            "square crops."
        ),
    )
    random_flip: bool = field(
        default=False,
        metadata=_meta(
            "Mirror images horizontally at random."
        ),
    )
    use_captions: bool = field(
        default=True,
        metadata=_meta(
            "Use same-name `.txt` captions (see Captions)."
        ),
    )
    train_batch_size: int = field(
        default=1,
        metadata=_meta(
            "Images per step per GPU (instance images; prior preservation adds as many class "
            "images).",
            minimum=1, maximum=64,
        ),
    )
    gradient_accumulation_steps: int = field(
        default=1,
        metadata=_meta(
            "Micro-batches per optimizer step.",
            minimum=1, maximum=128,
        ),
    )
    seed: int = field(
        default=1234,
        metadata=_meta(
            "Seed for noise, timesteps, data order, flips, crops and class images.",
            minimum=0, maximum=2**32 - 1,
        ),
    )
    output_name: str | None = field(
        default=AUTO,
        metadata=_meta(
            "File name of the result (letters, digits, `.`, `_`, `-`). Default: `easel-lora` / "
            "`easel-full`.",
            max_length=100,
        ),
    )
    with_prior_preservation: bool = field(
        default=False,
        metadata=_meta(
            "Add a prior-preservation loss on class images."
        ),
    )
    prior_loss_weight: float = field(
        default=1.0,
        metadata=_meta(
            "Weight of the prior-preservation loss.",
            minimum=0.0, maximum=100.0,
        ),
    )
    num_class_images: int = field(
        default=100,
        metadata=_meta(
            "Class images wanted; missing ones are generated with the base model.",
            minimum=1, maximum=10_000,
        ),
    )
    class_inference_steps: int = field(
        default=30,
        metadata=_meta(
            "Sampling steps per generated class image.",
            minimum=1, maximum=200,
        ),
    )
    train_text_encoder: bool = field(
        default=False,
        metadata=_meta(
            "Also train the text encoder(s) (LoRA in `lora` mode, all weights in `full` mode)."
        ),
    )
    mixed_precision: MixedPrecision = field(
        default="auto",
        metadata=_meta(
            "`auto`: bf16 on GPUs that support it, else fp16; fp32 (`no`) on CPU. `fp16` needs a "
            "GPU."
        ),
    )
    save_precision: SavePrecision = field(
        default="fp16",
        metadata=_meta(
            "Precision of the saved result."
        ),
    )
    use_8bit_adam: bool = field(
        default=False,
        metadata=_meta(
            "8-bit AdamW from bitsandbytes (GPU only)."
        ),
    )
    adam_weight_decay: float = field(
        default=1e-2,
        metadata=_meta(
            "AdamW weight decay.",
            minimum=0.0, maximum=1.0,
        ),
    )
    max_grad_norm: float = field(
        default=1.0,
        metadata=_meta(
            "Gradient clipping norm; 0 disables clipping.",
            minimum=0.0, maximum=1000.0,
        ),
    )
    noise_offset: float = field(
        default=0.0,
        metadata=_meta(
            "Offset noise strength (helps very dark/bright images).",
            minimum=0.0, maximum=1.0,
        ),
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata=_meta(
            "Trade compute for memory."
        ),
    )
    cache_latents: bool = field(
        default=True,
        metadata=_meta(
            "Encode every image once with the VAE and reuse the latent distribution each step."
        ),
    )
    compile: bool = field(
        default=False,
        metadata=_meta(
            "torch.compile the UNet (GPU; slower start, faster steps)."
        ),
    )
    cuda_graphs: bool = field(
        default=True,
        metadata=_meta(
            "Replay each step as a CUDA graph (one GPU, `lora` mode, frozen text encoder, "
            "constant learning rate, bf16/fp32, no compile/8-bit Adam/gradient checkpointing); "
            "other setups run eagerly."
        ),
    )
    compile_mode: CompileMode = field(
        default="default",
        metadata=_meta(
            "torch.compile mode when `compile` is true (`reduce-overhead` adds CUDA graphs)."
        ),
    )
    checkpointing_steps: int = field(
        default=250,
        metadata=_meta(
            "Save a resumable checkpoint every N steps; 0: only on stop.",
            minimum=0, maximum=100_000,
        ),
    )
    checkpoints_total_limit: int = field(
        default=2,
        metadata=_meta(
            "Checkpoints kept in `/opt/ml/checkpoints`.",
            minimum=1, maximum=100,
        ),
    )
    validation_steps: int = field(
        default=200,
        metadata=_meta(
            "Write a preview image every N steps and at the end; 0 disables previews.",
            minimum=0, maximum=100_000,
        ),
    )
    validation_prompt: str | None = field(
        default=AUTO,
        metadata=_meta(
            "Prompt of the previews. Default: `instance_prompt` (without `[filewords]`).",
            max_length=_MAX_PROMPT_CHARS,
        ),
    )
    validation_inference_steps: int = field(
        default=25,
        metadata=_meta(
            "Sampling steps per preview.",
            minimum=1, maximum=200,
        ),
    )
    validation_guidance_scale: float = field(
        default=7.0,
        metadata=_meta(
            "Guidance scale of the previews.",
            minimum=0.0, maximum=50.0,
        ),
    )

    # ---- derived values -------------------------------------------------------------------
    @property
    def effective_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-4 if self.mode == "lora" else 2e-6

    @property
    def effective_text_encoder_learning_rate(self) -> float:
        return self.text_encoder_learning_rate or self.effective_learning_rate

    @property
    def effective_alpha(self) -> float:
        return float(self.rank) if self.alpha is None else self.alpha

    @property
    def effective_output_name(self) -> str:
        return self.output_name or f"easel-{self.mode}"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def hyperparameter_specs() -> list[dataclasses.Field]:
    """The fields of :class:`HyperParameters` in declaration order (for docs and tests)."""
    return list(dataclasses.fields(HyperParameters))


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(HyperParameters)


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(the non-None type, whether None is allowed)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        return non_none[0], len(non_none) < len(args)
    return annotation, False


def describe_type(annotation: Any) -> str:
    base, _ = _base_type(annotation)
    if typing.get_origin(base) is Literal:
        return "one of " + ", ".join(f"`{c}`" for c in typing.get_args(base))
    return {str: "string", int: "integer", float: "number", bool: "boolean"}[base]


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("must be true or false")


def _parse_int(text: str) -> int:
    stripped = text.strip()
    try:
        return int(stripped)
    except ValueError:
        pass
    number = float(stripped)  # accept "100.0" / "1e3" when it is a whole number
    if not math.isfinite(number) or number != int(number):
        raise ValueError("must be a whole number")
    return int(number)


def _parse_float(text: str) -> float:
    number = float(text.strip())
    if not math.isfinite(number):
        raise ValueError("must be a finite number")
    return number


def _as_text(raw: object) -> str:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, (int, float, str)):
        return str(raw)
    raise ValueError(f"must be a string, got {type(raw).__name__}")


def _convert(spec: dataclasses.Field, annotation: Any, raw: object) -> Any:
    base, optional = _base_type(annotation)
    text = _as_text(raw)
    if optional and text.strip().lower() in ("", "auto", "none"):
        return None
    meta = spec.metadata
    if typing.get_origin(base) is Literal:
        choices = typing.get_args(base)
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value
    if base is bool:
        return _parse_bool(text)
    if base is str:
        value = text.strip()
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        if len(value) > meta.get("max_length", 10_000):
            raise ValueError(f"must be at most {meta['max_length']} characters")
        return value
    try:
        value = _parse_int(text) if base is int else _parse_float(text)
    except ValueError as exc:
        kind = "an integer" if base is int else "a number"
        raise ValueError(f"must be {kind}") from exc
    low, high = meta.get("minimum"), meta.get("maximum")
    too_low = low is not None and (value <= low if meta.get("exclusive_minimum") else value < low)
    if too_low or (high is not None and value > high):
        lower = f"greater than {low}" if meta.get("exclusive_minimum") else f"at least {low}"
        raise ValueError(f"must be {lower} and at most {high}")
    multiple = meta.get("multiple_of")
    if multiple and value % multiple:
        raise ValueError(f"must be a multiple of {multiple}")
    return value


def _describe_raw(raw: object) -> str:
    text = repr(raw)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_hyperparameters(raw: Mapping[str, object]) -> HyperParameters:
    """Validate SageMaker's hyperparameters (strings) into :class:`HyperParameters`.

    Raises :class:`TrainingInputError` listing every problem, each naming its field.
    """
    if not isinstance(raw, Mapping):
        raise TrainingInputError("hyperparameters.json must hold a JSON object of name/value pairs")
    specs = {spec.name: spec for spec in hyperparameter_specs()}
    types = _field_types()
    problems: list[str] = []
    values: dict[str, Any] = {}
    unknown = sorted(
        key for key in raw
        if key not in specs and not str(key).startswith(_IGNORED_PREFIXES)
    )
    for key in unknown:
        problems.append(f"hyperparameter '{key}': unknown name (see the training README for "
                        "the list)")
    for name, spec in specs.items():
        if name not in raw:
            if spec.metadata.get("required"):
                problems.append(f"hyperparameter '{name}': required ({spec.metadata['help']})")
            continue
        try:
            values[name] = _convert(spec, types[name], raw[name])
        except ValueError as exc:
            problems.append(f"hyperparameter '{name}': {exc}, got {_describe_raw(raw[name])}")
        else:
            if spec.metadata.get("required") and values[name] in ("", None):
                problems.append(f"hyperparameter '{name}': must not be empty")
    if not problems:
        problems.extend(_cross_field_problems(values))
    if problems:
        raise TrainingInputError("invalid hyperparameters: " + "; ".join(problems))
    return HyperParameters(**values)


def _cross_field_problems(values: Mapping[str, Any]) -> list[str]:
    defaults = HyperParameters()

    def get(name: str) -> Any:
        return values.get(name, getattr(defaults, name))

    problems = []
    if get("with_prior_preservation") and not get("class_prompt"):
        problems.append("hyperparameter 'class_prompt': required when with_prior_preservation "
                        "is true (e.g. 'a photo of a dog')")
    name = get("output_name")
    if name is not None and not _OUTPUT_NAME.match(name):
        problems.append("hyperparameter 'output_name': use 1-100 letters, digits, '.', '_' or "
                        f"'-' starting with a letter or digit, got {_describe_raw(name)}")
    if get("lr_warmup_steps") > get("max_train_steps"):
        problems.append("hyperparameter 'lr_warmup_steps': must not exceed max_train_steps")
    return problems
