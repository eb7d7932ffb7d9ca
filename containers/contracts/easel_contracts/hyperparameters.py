"""The settings of a training job: one model for the portal, the scripts and the trainer.

SageMaker hands a training job its hyperparameters as strings
(``/opt/ml/input/config/hyperparameters.json``). :class:`HyperParameters` holds every setting with
its default, bounds and help text (the Field descriptions), so the trainer's validation, the
portal's training form, ``scripts/train.py``'s flags and the README table all come from it.
:meth:`HyperParameters.from_strings` validates the string form and reports every problem at once,
each naming its field; :meth:`HyperParameters.to_sagemaker` is the inverse.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from easel_contracts.families import FamilyError, ModelFamily, facts_for

Mode = Literal["lora", "full"]
MixedPrecision = Literal["auto", "no", "fp16", "bf16"]
SavePrecision = Literal["fp16", "bf16", "fp32"]
LrScheduler = Literal["constant", "constant_with_warmup", "linear", "cosine"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
CompileScope = Literal["blocks", "model"]

# SageMaker and its SDKs add bookkeeping keys of their own; they are not ours to validate.
IGNORED_PREFIXES = ("sagemaker_", "_")
# Words that select a derived value (a field whose default is None).
DERIVED_WORDS = ("", "auto", "none")
MAX_PROMPT_CHARS = 2000
OUTPUT_NAME_MAX = 100
OUTPUT_NAME_PATTERN = rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{OUTPUT_NAME_MAX - 1}}}$"
_PATTERN_RULES = {
    "output_name": "use 1-100 letters, digits, '.', '_' or '-' starting with a letter or digit",
}


class FamilyDefaults(BaseModel):
    """The settings a job takes for its base model's family when the hyperparameters leave them
    derived. Starting points as the model makers and the common LoRA trainers use them: the
    family's native resolution; rank 16 and learning rate 1e-4 for LoRAs of every family (no
    family's makers publish other values); previews with the family's own sampling guidance and a
    step count that suits its sampler (FLUX.1 schnell is distilled to 4 steps)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resolution: int
    rank: int
    learning_rate: float  # lora
    full_learning_rate: float | None  # None: the family trains LoRAs only
    validation_guidance_scale: float
    validation_inference_steps: int


def _defaults(family: ModelFamily, *, full: bool = True, steps: int = 25) -> FamilyDefaults:
    facts = facts_for(family)
    return FamilyDefaults(resolution=facts.resolution, rank=16, learning_rate=1e-4,
                          full_learning_rate=2e-6 if full else None,
                          validation_guidance_scale=facts.guidance,
                          validation_inference_steps=steps)


# One table: the trainer fills derived settings from it, the portal's form and scripts/train.py
# show it. The SDXL refiner is not trained (it is a second pass only).
TRAINING_DEFAULTS: dict[ModelFamily, FamilyDefaults] = {
    ModelFamily.SD1: _defaults(ModelFamily.SD1),
    ModelFamily.SD2: _defaults(ModelFamily.SD2),
    ModelFamily.SDXL: _defaults(ModelFamily.SDXL),
    ModelFamily.SD35_MEDIUM: _defaults(ModelFamily.SD35_MEDIUM, full=False, steps=28),
    ModelFamily.SD35_LARGE: _defaults(ModelFamily.SD35_LARGE, full=False, steps=28),
    ModelFamily.FLUX_DEV: _defaults(ModelFamily.FLUX_DEV, full=False, steps=28),
    ModelFamily.FLUX_SCHNELL: _defaults(ModelFamily.FLUX_SCHNELL, full=False, steps=4),
}
DEFAULT_FAMILY = ModelFamily.SD1  # what a job with no known family shows (SD1.x's values)


def training_defaults(family: ModelFamily | str) -> FamilyDefaults:
    """The family's defaults; a family that is not trained raises ``FamilyError``."""
    facts = facts_for(family)
    found = TRAINING_DEFAULTS.get(facts.family)
    if found is None:
        trained = ", ".join(facts_for(f).label for f in TRAINING_DEFAULTS)
        raise FamilyError(f"{facts.label} is not trained; training takes {trained}")
    return found


def defaults_text(field: str) -> str:
    """One derived field's default per trained family, families of one value together:
    ``SD1.x, SD2.x, SDXL 7; SD3.5 medium 4.5; ...`` (``16 for every family`` when all agree)."""
    groups: dict[float, list[str]] = {}
    for family, defaults in TRAINING_DEFAULTS.items():
        groups.setdefault(getattr(defaults, field), []).append(facts_for(family).label)
    if len(groups) == 1:
        return f"{next(iter(groups)):g} for every family"
    return "; ".join(f"{', '.join(labels)} {value:g}" for value, labels in groups.items())


def default_learning_rate(mode: str, family: ModelFamily | str = DEFAULT_FAMILY) -> float:
    """The learning rate when none is given: the family's LoRA rate for ``lora`` (1e-4), its
    full fine-tuning rate for ``full`` (2e-6)."""
    defaults = training_defaults(family)
    if mode == "lora" or defaults.full_learning_rate is None:
        return defaults.learning_rate
    return defaults.full_learning_rate


def _one_line(value: str) -> str:
    # CreateTrainingJob's HyperParameterValue pattern is `.*`, which matches no line break
    if "\x00" in value:
        raise PydanticCustomError("nul_character", "must not contain NUL characters")
    if "\n" in value or "\r" in value:
        raise PydanticCustomError("line_break", "must be one line (no line breaks)")
    return value


Text = Annotated[str, AfterValidator(_one_line)]


class HyperParameters(BaseModel):
    """Every setting of a training job. ``None`` means "derived" (see each description)."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", str_strip_whitespace=True, allow_inf_nan=False,
    )

    instance_prompt: Text = Field(
        min_length=1, max_length=MAX_PROMPT_CHARS,
        description="Prompt for the concept images, e.g. `a photo of sks dog`. `[filewords]` is "
        "replaced by the image's caption (see Captions).")
    mode: Mode = Field(
        "lora", description="`lora` trains LoRA adapters; `full` fine-tunes the whole UNet "
        "(DreamBooth).")
    checkpoint: Text = Field(
        "", max_length=200,
        description="Name of the base model inside the `model` channel (file or folder name "
        "without extension). Empty: the only model there.")
    class_prompt: Text = Field(
        "", max_length=MAX_PROMPT_CHARS,
        description="Prompt for the class images used by prior preservation, e.g. `a photo of a "
        "dog`. Required when `with_prior_preservation` is true.")
    max_train_steps: int = Field(1000, ge=1, le=100_000, description="Optimizer steps to train.")
    learning_rate: float | None = Field(
        None, gt=0.0, le=1.0,
        description="Learning rate. Default: the base model family's (`lora`: "
        + defaults_text("learning_rate") + "; `full`: 2e-6).")
    text_encoder_learning_rate: float | None = Field(
        None, gt=0.0, le=1.0,
        description="Learning rate of the text encoder(s) when `train_text_encoder` is true. "
        "Default: `learning_rate`.")
    lr_scheduler: LrScheduler = Field("constant", description="Learning-rate schedule.")
    lr_warmup_steps: int = Field(
        0, ge=0, le=100_000,
        description="Linear warm-up steps (for the `*warmup*`, `linear` and `cosine` "
        "schedules).")
    rank: int | None = Field(
        None, ge=1, le=256,
        description="LoRA rank (`lora` mode). Default: the base model family's ("
        + defaults_text("rank") + ").")
    alpha: float | None = Field(
        None, gt=0.0, le=1024.0,
        description="LoRA alpha; the update is scaled by alpha/rank. Default: `rank` (scale 1).")
    lora_dropout: float = Field(0.0, ge=0.0, le=0.9, description="Dropout on the LoRA branch.")
    resolution: int | None = Field(
        None, ge=32, le=2048, multiple_of=8,
        description="Training resolution in pixels (square side, or the area of the buckets "
        "when `bucketing` is on). Default: the base model's native size (512 SD1.x, 768 SD2-v, "
        "1024 SDXL, SD3.5 and FLUX.1). Multiple of 8 (16 for SD3.5 and FLUX.1).")
    min_image_side: int | None = Field(
        None, ge=1, le=8192,
        description="Images whose shorter side is below this are rejected as too small. "
        "Default: half of `resolution`.")
    center_crop: bool = Field(
        True, description="Without bucketing: crop the middle of each image (true) or a random "
        "part per step (false).")
    bucketing: bool = Field(
        False, description="Group images by aspect ratio into buckets of about `resolution`² "
        "pixels instead of square crops.")
    random_flip: bool = Field(False, description="Mirror images horizontally at random.")
    use_captions: bool = Field(True, description="Use same-name `.txt` captions (see Captions).")
    train_batch_size: int = Field(
        1, ge=1, le=64,
        description="Images per step per GPU (instance images; prior preservation adds as many "
        "class images).")
    gradient_accumulation_steps: int = Field(
        1, ge=1, le=128, description="Micro-batches per optimizer step.")
    seed: int = Field(
        1234, ge=0, le=2**32 - 1,
        description="Seed for noise, timesteps, data order, flips, crops and class images.")
    output_name: Text | None = Field(
        None, max_length=OUTPUT_NAME_MAX, pattern=OUTPUT_NAME_PATTERN,
        description="File name of the result (letters, digits, `.`, `_`, `-`). Default: "
        "`easel-lora` / `easel-full`.")
    with_prior_preservation: bool = Field(
        False, description="Add a prior-preservation loss on class images.")
    prior_loss_weight: float = Field(
        1.0, ge=0.0, le=100.0, description="Weight of the prior-preservation loss.")
    num_class_images: int = Field(
        100, ge=1, le=10_000,
        description="Class images wanted; missing ones are generated with the base model.")
    class_inference_steps: int = Field(
        30, ge=1, le=200, description="Sampling steps per generated class image.")
    train_text_encoder: bool = Field(
        False, description="Also train the text encoder(s) (LoRA in `lora` mode, all weights in "
        "`full` mode).")
    mixed_precision: MixedPrecision = Field(
        "auto", description="`auto`: bf16 on GPUs that support it, else fp16; fp32 (`no`) on "
        "CPU. `fp16` needs a GPU.")
    save_precision: SavePrecision = Field("fp16", description="Precision of the saved result.")
    use_8bit_adam: bool = Field(
        False, description="8-bit AdamW from bitsandbytes (GPU only).")
    adam_weight_decay: float = Field(0.01, ge=0.0, le=1.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(
        1.0, ge=0.0, le=1000.0, description="Gradient clipping norm; 0 disables clipping.")
    noise_offset: float = Field(
        0.0, ge=0.0, le=1.0,
        description="Offset noise strength (helps very dark/bright images).")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    cache_latents: bool = Field(
        True, description="Encode every image once with the VAE and reuse the latent "
        "distribution each step.")
    compile: bool = Field(
        False, description="torch.compile the UNet (GPU; slower start, faster steps).")
    cuda_graphs: bool = Field(
        True, description="Replay each step as a CUDA graph (one GPU, `lora` mode, frozen text "
        "encoder, constant learning rate, bf16/fp32, no 8-bit Adam/gradient checkpointing; "
        "with `compile`, modes `default` and `max-autotune-no-cudagraphs` run inside the graph); "
        "other setups run eagerly.")
    compile_mode: CompileMode = Field(
        "default", description="torch.compile mode when `compile` is true (`reduce-overhead` "
        "and `max-autotune` add torch's own CUDA graphs, so the step runs without "
        "`cuda_graphs`).")
    compile_scope: CompileScope = Field(
        "model", description="What `compile` compiles: `model` compiles the whole denoiser "
        "forward (and backward) as one graph; `blocks` compiles each repeated block of the "
        "denoiser (the UNet's ResNet and transformer blocks, the SD3.5/FLUX.1 transformer blocks) "
        "in place, each distinct block once, reused by its repeats. On SD1.5, batch 4, inside "
        "the CUDA-graph step (H100): `model` 104 images/s after a ~300 s compile, `blocks` 92 "
        "images/s after ~330 s.")
    checkpointing_steps: int = Field(
        250, ge=0, le=100_000,
        description="Save a resumable checkpoint every N steps; 0: only on stop.")
    checkpoints_total_limit: int = Field(
        2, ge=1, le=100, description="Checkpoints kept in `/opt/ml/checkpoints`.")
    validation_steps: int = Field(
        200, ge=0, le=100_000,
        description="Write a preview image every N steps and at the end; 0 disables previews.")
    validation_prompt: Text | None = Field(
        None, max_length=MAX_PROMPT_CHARS,
        description="Prompt of the previews. Default: `instance_prompt` (without "
        "`[filewords]`).")
    validation_inference_steps: int | None = Field(
        None, ge=1, le=200, description="Sampling steps per preview. Default: the base model "
        "family's (" + defaults_text("validation_inference_steps") + ").")
    validation_guidance_scale: float | None = Field(
        None, ge=0.0, le=50.0, description="Guidance scale of the previews. Default: the base "
        "model family's (" + defaults_text("validation_guidance_scale") + ").")

    @model_validator(mode="after")
    def _related_fields(self) -> HyperParameters:
        problems = []
        if self.with_prior_preservation and not self.class_prompt:
            problems.append(("class_prompt", "required when with_prior_preservation is true "
                                             "(e.g. 'a photo of a dog')"))
        if self.lr_warmup_steps > self.max_train_steps:
            problems.append(("lr_warmup_steps", "must not exceed max_train_steps"))
        if problems:
            raise PydanticCustomError(
                "related_fields", "{summary}",
                {"summary": "; ".join(f"{name}: {text}" for name, text in problems),
                 "problems": problems})
        return self

    # ---- derived values -------------------------------------------------------------------
    @property
    def effective_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return default_learning_rate(self.mode)

    @property
    def effective_text_encoder_learning_rate(self) -> float:
        return self.text_encoder_learning_rate or self.effective_learning_rate

    @property
    def effective_alpha(self) -> float:
        """``alpha``, else the rank (scale 1); a derived rank is known after ``for_family``."""
        if self.alpha is not None:
            return self.alpha
        if self.rank is None:
            raise ValueError("rank is derived from the base model's family: use for_family()")
        return float(self.rank)

    def for_family(self, family: ModelFamily | str) -> HyperParameters:
        """These settings with every family-derived one (rank, learning rate, preview steps and
        guidance) filled from the family's defaults; resolution stays derived (the job takes the
        model's own native size)."""
        defaults = training_defaults(family)
        filled = {"rank": defaults.rank,
                  "learning_rate": default_learning_rate(self.mode, family),
                  "validation_inference_steps": defaults.validation_inference_steps,
                  "validation_guidance_scale": defaults.validation_guidance_scale}
        return self.model_copy(update={name: value for name, value in filled.items()
                                       if getattr(self, name) is None})

    @property
    def effective_output_name(self) -> str:
        return self.output_name or f"easel-{self.mode}"

    # ---- the string form SageMaker uses -----------------------------------------------------
    @classmethod
    def from_strings(cls, raw: Mapping[str, object]) -> HyperParameters:
        """Validate SageMaker's string hyperparameters (JSON numbers and booleans too).

        Keys starting with ``sagemaker_`` or ``_`` are ignored. ``auto``, ``none`` or an empty
        string select a derived value. Raises :class:`HyperParameterError` naming every problem.
        """
        if not isinstance(raw, Mapping):
            raise HyperParameterError(
                [("", "hyperparameters.json must hold a JSON object of name/value pairs")])
        problems: list[tuple[str, str]] = []
        values: dict[str, Any] = {}
        texts: dict[str, str] = {}
        for key, value in raw.items():
            name = str(key)
            if name.startswith(IGNORED_PREFIXES):
                continue
            if name not in cls.model_fields:
                problems.append((name, "unknown name (see the training README for the list)"))
                continue
            try:
                texts[name] = _as_text(value)
                values[name] = _normalise(name, texts[name])
            except ValueError as exc:
                problems.append((name, str(exc)))
        try:
            model = cls.model_validate(values)
        except ValidationError as exc:
            problems.extend(_describe_errors(exc, texts))
            model = None
        if problems:
            raise HyperParameterError(sorted(problems, key=_field_order))
        assert model is not None
        return model

    def to_sagemaker(self) -> dict[str, str]:
        """Every set value as the strings SageMaker carries; derived (None) values are left out,
        so the trainer derives them."""
        return {name: _to_text(value)
                for name, value in self.model_dump(exclude_none=True).items()}


class HyperParameterError(ValueError):
    """Invalid hyperparameters: ``problems`` lists ``(field, what is wrong)`` for each."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("invalid hyperparameters: " + "; ".join(
            f"hyperparameter '{name}': {text}" if name else text for name, text in problems))


# ---- helpers for the string form -------------------------------------------------------------

def _base_type(name: str) -> tuple[Any, bool]:
    """(the field's non-None type, whether None is allowed)."""
    annotation = HyperParameters.model_fields[name].annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        non_none = [a for a in args if a is not type(None)]
        return non_none[0], len(non_none) < len(args)
    return annotation, False


def _as_text(raw: object) -> str:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, (int, float, str)):
        return str(raw)
    raise ValueError(f"must be a string, got {type(raw).__name__}")


def _normalise(name: str, text: str) -> Any:
    base, optional = _base_type(name)
    value = text.strip()
    if optional and value.lower() in DERIVED_WORDS:
        return None
    if typing.get_origin(base) is Literal:
        return value.lower()
    if base is bool:
        return value.lower()
    if base is int:
        try:
            number = float(value)  # "1e3" and "100.0" are whole numbers too
        except ValueError:
            return value  # pydantic names the problem
        if math.isfinite(number) and number == int(number) and not value.isdigit():
            return int(number)
    return value


def _to_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # round-trips exactly
    return str(value)


def _describe_raw(raw: object) -> str:
    text = repr(raw)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe_errors(exc: ValidationError, given: Mapping[str, Any]) -> list[tuple[str, str]]:
    problems = []
    for error in exc.errors(include_url=False):
        if error["type"] == "related_fields":
            problems.extend(error["ctx"]["problems"])
            continue
        name = str(error["loc"][0]) if error["loc"] else ""
        text = _message(name, error)
        if error["type"] == "missing":
            description = HyperParameters.model_fields[name].description
            problems.append((name, f"required ({description})"))
            continue
        if name in given:
            text += f", got {_describe_raw(given[name])}"
        problems.append((name, text))
    return problems


def _message(name: str, error: Mapping[str, Any]) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return "must be an integer"
    if kind in ("float_parsing", "float_type"):
        return "must be a number"
    if kind == "finite_number":
        return "must be a finite number"
    if kind in ("bool_parsing", "bool_type"):
        return "must be true or false"
    if kind == "literal_error":
        choices = typing.get_args(_base_type(name)[0])
        return "must be one of " + ", ".join(choices)
    if kind == "greater_than_equal":
        return f"must be at least {ctx['ge']}"
    if kind == "greater_than":
        return f"must be greater than {ctx['gt']}"
    if kind == "less_than_equal":
        return f"must be at most {ctx['le']}"
    if kind == "multiple_of":
        return f"must be a multiple of {ctx['multiple_of']}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters"
    if kind == "string_pattern_mismatch":
        return _PATTERN_RULES.get(name, "has characters that are not allowed")
    return str(error["msg"])


def _field_order(problem: tuple[str, str]) -> int:
    names = list(HyperParameters.model_fields)
    return names.index(problem[0]) if problem[0] in names else len(names)


# ---- the schema, flattened for forms, flags and docs -------------------------------------------

def field_schemas() -> dict[str, dict[str, Any]]:
    """Each field's JSON schema with an optional (``anyOf`` with null) type flattened: the keys
    ``type``, ``default``, ``description`` and bounds as JSON Schema names them, ``enum`` for
    choices, ``derived`` (true when the default is derived) and ``required``."""
    schema = HyperParameters.model_json_schema()
    required = set(schema.get("required", ()))
    flattened = {}
    for name, prop in schema["properties"].items():
        entry = {key: value for key, value in prop.items() if key != "anyOf"}
        for option in prop.get("anyOf", ()):
            if option.get("type") != "null":
                entry.update(option)
        entry["derived"] = "anyOf" in prop and prop.get("default", "x") is None
        entry["required"] = name in required
        flattened[name] = entry
    return flattened


def markdown_table() -> str:
    """The README's hyperparameter table, from the schema."""
    rows = ["| name | type | default | bounds | meaning |", "| --- | --- | --- | --- | --- |"]
    for name, field in field_schemas().items():
        if "enum" in field:
            kind = "one of " + ", ".join(f"`{choice}`" for choice in field["enum"])
        else:
            kind = {"string": "string", "integer": "integer", "number": "number",
                    "boolean": "boolean"}[field["type"]]
        if field["required"]:
            default = "required"
        elif field["derived"]:
            default = "derived"
        elif field["type"] == "boolean":
            default = "true" if field["default"] else "false"
        elif field["default"] == "":
            default = "empty"
        else:
            default = f"`{field['default']}`"
        bounds = []
        if "exclusiveMinimum" in field:
            bounds.append(f"> {field['exclusiveMinimum']}")
        if "minimum" in field:
            bounds.append(f"≥ {field['minimum']}")
        if "maximum" in field:
            bounds.append(f"≤ {field['maximum']}")
        if "multipleOf" in field:
            bounds.append(f"multiple of {field['multipleOf']}")
        if "maxLength" in field:
            bounds.append(f"≤ {field['maxLength']} chars")
        rows.append(f"| `{name}` | {kind} | {default} | {', '.join(bounds) or '—'} | "
                    f"{field['description']} |")
    return "\n".join(rows)
