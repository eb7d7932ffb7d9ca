"""What a training job tells the outside while and after it runs.

- ``checkpoints/progress.json`` (:class:`Progress`): written by the trainer under
  ``/opt/ml/checkpoints``, synced by SageMaker (or the local stand-in) to
  ``s3://<bucket>/training/<job>/checkpoints/progress.json``, read by the portal and
  ``scripts/train.py``. Previews sit beside it in ``preview/step-<N>.png``.
- ``output/failure``: plain text, the reason a job failed; SageMaker shows its first
  :data:`FAILURE_REASON_MAX` characters as the job's ``FailureReason``.
- ``model/training_report.json`` (:class:`TrainingReport`): written with the result; it travels
  inside ``model.tar.gz``.

Readers parse through these models, so a missing field, a wrong type or a file that is not JSON
becomes a :class:`ProgressError` with a message a person can act on, never a crash.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ProgressStatus = Literal["running", "completed", "failed", "stopped"]
ProgressPhase = Literal["loading", "class_images", "caching", "first_step", "training", "saving"]
"""What a job is doing, in the order a job goes through them (``class_images`` only with prior
preservation). ``first_step`` is the first optimizer step of the run, which carries the
torch.compile (``compile=true``) and the CUDA-graph capture; ``training`` is every step after."""

PHASE_LABELS: dict[ProgressPhase, str] = {
    "loading": "Loading the base model…",
    "class_images": "Generating class images…",
    "caching": "Encoding prompts and caching latents…",
    "first_step": "Preparing the first step (compiling, capturing)…",
    "training": "Training",
    "saving": "Saving the result…",
}
"""What a person reads for each phase (the portal's job page, ``scripts/train.py``)."""

PROGRESS_FILE = "progress.json"          # in the checkpoints folder
PREVIEW_FOLDER = "preview"               # in the checkpoints folder: step-<N>.png
FAILURE_FILE = "output/failure"          # under /opt/ml
REPORT_FILE = "training_report.json"     # in /opt/ml/model
PROGRESS_MAX_BYTES = 64 * 1024           # readers never read more than this
# SageMaker keeps the first 1024 characters of /opt/ml/output/failure as FailureReason:
# https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-training-signal-success-failure.html
FAILURE_REASON_MAX = 1024


class ProgressError(ValueError):
    """A progress.json that cannot be read; the message says what is wrong with it."""


class Progress(BaseModel):
    """``checkpoints/progress.json``: where a training job is, written at most once a second."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    step: int = Field(ge=0)
    total_steps: int | None = Field(default=None, ge=1)
    loss: float | None = Field(default=None, allow_inf_nan=False)
    images_per_second: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    eta_seconds: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)
    status: ProgressStatus
    # a file written before phases existed was written from the step loop: it reads as training
    phase: ProgressPhase = "training"
    updated_at: datetime | None = None

    @property
    def percent(self) -> float:
        """Share of the steps done, 0-100 (0 while the total is unknown)."""
        if not self.total_steps:
            return 0.0
        return round(min(100.0, 100.0 * self.step / self.total_steps), 1)

    @property
    def phase_note(self) -> str:
        """What a running job is doing while it is not in its steps (loading, caching, the first
        step, saving), in words for a person watching it; empty while it trains or has ended."""
        if self.status != "running" or self.phase == "training":
            return ""
        return PHASE_LABELS[self.phase]

    def to_json(self) -> str:
        return self.model_dump_json(indent=1)


def finite_or_none(value: float | None) -> float | None:
    """A loss as progress.json carries it: a finite number or null."""
    return value if value is not None and math.isfinite(value) else None


def parse_progress(raw: bytes | str) -> Progress:
    """Parse a progress.json body; :class:`ProgressError` says what is wrong with a bad one."""
    if len(raw) > PROGRESS_MAX_BYTES:
        raise ProgressError(f"progress.json is larger than {PROGRESS_MAX_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProgressError(f"progress.json is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ProgressError("progress.json is not a JSON object")
    try:
        return Progress.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'value'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ProgressError(f"progress.json has unexpected content ({problems})") from None


def failure_reason(text: str) -> str:
    """The FailureReason SageMaker makes of an ``output/failure`` file's text."""
    return text.strip()[:FAILURE_REASON_MAX]


class ReportBaseModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    file: str
    arch: str
    prediction_type: str
    family: str | None = None  # easel_contracts.families.ModelFamily value (absent before 17)


class RankShare(BaseModel):
    """What one data-parallel process trained on in this run (counted by that process)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    rank: int = Field(ge=0)
    steps: int = Field(ge=0, description="optimizer steps this process took part in")
    samples: int = Field(ge=0, description="images this process trained on (forward + backward)")


class TrainingReport(BaseModel):
    """``model/training_report.json``: what a completed job trained, with what, and how fast."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    status: Literal["completed"] = "completed"
    mode: Literal["lora", "full"]
    result: str = Field(description="the result file, relative to the model folder")
    base_model: ReportBaseModel
    steps: int = Field(ge=0)
    resumed_from_step: int | None = Field(default=None, ge=1)
    loss_curve: list[float]
    final_loss: float | None
    duration_seconds: float = Field(ge=0.0)
    training_seconds: float = Field(ge=0.0)
    images_per_second: float = Field(ge=0.0)
    num_images: int = Field(ge=0)
    num_class_images: int = Field(ge=0)
    prompts: list[str]
    world_size: int = Field(ge=1)
    ranks: list[RankShare] = Field(default_factory=list,
                                   description="one entry per process, by rank (empty in "
                                   "reports written before it was added)")
    device: str
    settings: dict[str, Any]
    versions: dict[str, str]
    latent_cache: bool
    text_embedding_cache: bool

    def to_json(self) -> str:
        return self.model_dump_json(indent=1)
