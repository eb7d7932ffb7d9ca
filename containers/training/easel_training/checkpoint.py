"""Resumable checkpoints in ``$EASEL_OPT_ML/checkpoints/checkpoint-<step>/``.

Each holds the trainable weights (``trainable.safetensors``, float32), the optimizer, scheduler,
grad-scaler and RNG state (``training_state.pt``, loaded with ``weights_only=True``) and
``state.json`` (step and the settings that must match to resume). A checkpoint is written to a
hidden folder and renamed into place, so a job killed mid-write leaves only complete ones.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from easel_training.errors import TrainingInputError

PREFIX = "checkpoint-"
STATE_FILE = "state.json"
WEIGHTS_FILE = "trainable.safetensors"
TRAINING_STATE_FILE = "training_state.pt"


@dataclass
class Checkpoint:
    step: int
    path: Path
    weights: dict[str, torch.Tensor]
    training_state: dict[str, Any]
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


def save_checkpoint(folder: Path, *, step: int, weights: dict[str, torch.Tensor],
                    training_state: dict[str, Any], state: dict[str, Any],
                    keep: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{PREFIX}{step}"
    tmp = folder / f".tmp-{PREFIX}{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({name: t.detach().to("cpu", torch.float32).contiguous()
               for name, t in weights.items()}, str(tmp / WEIGHTS_FILE))
    torch.save(training_state, tmp / TRAINING_STATE_FILE)
    (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=1),
                                  encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for _, old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> Checkpoint:
    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    weights = load_file(str(path / WEIGHTS_FILE))
    training_state = torch.load(path / TRAINING_STATE_FILE, map_location="cpu",
                                weights_only=True)
    return Checkpoint(step=int(state["step"]), path=path, weights=weights,
                      training_state=training_state, state=state)


def latest_checkpoint(folder: Path) -> Checkpoint | None:
    found = list_checkpoints(folder)
    return load_checkpoint(found[-1][1]) if found else None


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
