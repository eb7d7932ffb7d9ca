"""Resumable checkpoints in ``$EASEL_OPT_ML/checkpoints/checkpoint-<step>/`` (the layout is the
contract ``easel_contracts.checkpoints``).

accelerate's ``save_state``/``load_state`` write and read the optimizer, learning-rate scheduler,
grad-scaler and RNG state (one ``random_states_<rank>.pkl`` per process); every ``.bin``/``.pkl``
is read with ``torch.load(weights_only=True)``. Easel adds, through accelerate's state hooks,
``trainable.safetensors`` (only the trained weights, float32: the LoRA adapters, or the UNet and
text encoders in ``full`` mode; never the frozen base model) and ``state.json`` (format, step,
the settings that must match to resume, the loss curve so far); in ``lora`` mode also
``lora.safetensors``, the LoRA at that step in the published format, so a stopped job's last
checkpoint can go into the LoRA library. A checkpoint is written to a hidden folder and renamed
into place, so a job killed mid-write leaves only complete ones.
"""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from easel_contracts.checkpoints import CHECKPOINT_PREFIX as PREFIX
from easel_contracts.checkpoints import STATE_FILE, WEIGHTS_FILE, checkpoint_name
from safetensors.torch import load_file, save_file

from easel_training.errors import TrainingInputError

FORMAT = 2  # 1: Easel's own training_state.pt (before accelerate's save_state); not resumable


@dataclass
class Checkpoint:
    step: int
    path: Path
    state: dict[str, Any]


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    found = []
    if not folder.is_dir():
        return found
    for child in folder.iterdir():
        if not child.name.startswith(PREFIX) or not (child / STATE_FILE).is_file():
            continue
        try:
            step = int(child.name[len(PREFIX):])
        except ValueError:
            continue
        found.append((step, child))
    return sorted(found)


def save_weights(folder: Path, weights: dict[str, torch.Tensor]) -> None:
    save_file({name: t.detach().to("cpu", torch.float32).contiguous()
               for name, t in weights.items()}, str(folder / WEIGHTS_FILE))


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / WEIGHTS_FILE))


def save_checkpoint(accelerator: Any, folder: Path, *, step: int, state: dict[str, Any],
                    keep: int, extra: Callable[[Path], None] | None = None) -> Path:
    """Write ``checkpoint-<step>`` (call on every process; the main one renames it into place).

    The trainable weights come from the accelerator's save-state hook (see ``Trainer``);
    ``extra`` (main process) adds files to the folder before it is renamed into place.
    """
    final = folder / checkpoint_name(step)
    tmp = folder / f".tmp-{checkpoint_name(step)}"  # one name for every process of the job
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if extra is not None:
            extra(tmp)
        (tmp / STATE_FILE).write_text(
            json.dumps({**state, "format": FORMAT, "step": step}, indent=1), encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for _, old in list_checkpoints(folder)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def latest_checkpoint(folder: Path) -> Checkpoint | None:
    """The newest complete checkpoint; one this image cannot resume is refused with a reason."""
    found = list_checkpoints(folder)
    if not found:
        return None
    step, path = found[-1]
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TrainingInputError(
            f"{path.name}/{STATE_FILE} cannot be read ({exc}); remove {path.name} from the "
            "checkpoint S3 path to resume from an older checkpoint, or use a new path.") from None
    made_with = state.get("format", 1) if isinstance(state, dict) else None
    if made_with != FORMAT:
        raise TrainingInputError(
            f"{path.name} was written by an older Easel training image (checkpoint format "
            f"{made_with}, this image reads format {FORMAT}) and cannot be resumed. Finish the "
            "job with the image that started it, or start again with a new checkpoint S3 path.")
    return Checkpoint(step=step, path=path, state=state)


def load_checkpoint(accelerator: Any, checkpoint: Checkpoint) -> None:
    """Restore the accelerator's state (the load-state hook restores the trainable weights)."""
    try:
        accelerator.load_state(str(checkpoint.path))
    except (OSError, RuntimeError, KeyError, ValueError, pickle.UnpicklingError) as exc:
        raise TrainingInputError(
            f"{checkpoint.path.name} cannot be resumed ({type(exc).__name__}: {exc}); remove it "
            "from the checkpoint S3 path to resume from an older one, or use a new path."
        ) from None


def check_resumable(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint made with settings that change what is trained."""
    differences = [
        f"{key}: checkpoint has {saved.get(key)!r}, job has {value!r}"
        for key, value in current.items() if saved.get(key) != value
    ]
    if differences:
        raise TrainingInputError(
            "the checkpoints folder holds a checkpoint from a job with different settings ("
            + "; ".join(differences) + "). Use a new checkpoint S3 path or the same settings.")
