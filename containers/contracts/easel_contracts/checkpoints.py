"""A training job's checkpoint folder: ``/opt/ml/checkpoints`` in the job, synced by SageMaker (or
the local stand-in) to the job's ``CheckpointConfig.S3Uri``. The trainer writes it; the portal
reads it to resume a stopped job and to publish its last checkpoint's LoRA.

::

    checkpoint-<step>/state.json             format, step, settings that must match to resume
    checkpoint-<step>/trainable.safetensors  the trained weights as the trainer names them (resume)
    checkpoint-<step>/lora.safetensors       `lora` mode: the LoRA at that step, in the format a
                                             completed job's ``Lora/<name>.safetensors`` has
    checkpoint-<step>/*.bin, *.pkl           accelerate's optimizer, scheduler and RNG state

(``progress.json`` and ``preview/`` sit beside the checkpoints: ``easel_contracts.progress``.)
A checkpoint is written whole into a hidden folder and renamed into place, but the sync uploads
its files one by one: a reader counts a checkpoint only once the files it needs are all there.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "state.json"
WEIGHTS_FILE = "trainable.safetensors"
LORA_FILE = "lora.safetensors"


class CheckpointFiles(BaseModel):
    """One ``checkpoint-<step>/`` folder as a listing shows it."""

    model_config = ConfigDict(frozen=True)

    step: int = Field(ge=0)
    files: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        return checkpoint_name(self.step)

    @property
    def resumable(self) -> bool:
        return STATE_FILE in self.files

    @property
    def has_lora(self) -> bool:
        return STATE_FILE in self.files and LORA_FILE in self.files


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step}"


def parse_member(relative: str) -> tuple[int, str] | None:
    """``checkpoint-250/lora.safetensors`` -> ``(250, "lora.safetensors")``; None for anything
    else (progress.json, previews, a hidden folder being written)."""
    folder, slash, file = relative.partition("/")
    if not slash or not file or "/" in file or not folder.startswith(CHECKPOINT_PREFIX):
        return None
    digits = folder[len(CHECKPOINT_PREFIX):]
    if not digits.isdigit() or not digits.isascii():
        return None
    return int(digits), file


def checkpoints_in(keys: Iterable[str], prefix: str) -> list[CheckpointFiles]:
    """The checkpoints among the object keys under ``prefix`` (the checkpoint folder), oldest
    first."""
    found: dict[int, set[str]] = {}
    for key in keys:
        if not key.startswith(prefix):
            continue
        member = parse_member(key[len(prefix):])
        if member is not None:
            found.setdefault(member[0], set()).add(member[1])
    return [CheckpointFiles(step=step, files=frozenset(files))
            for step, files in sorted(found.items())]


def lora_key(prefix: str, step: int) -> str:
    """The object key of the LoRA saved with checkpoint ``step`` under ``prefix``."""
    return f"{prefix}{checkpoint_name(step)}/{LORA_FILE}"
