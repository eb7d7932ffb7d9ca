"""Choosing and loading the base model from the ``model`` channel, offline.

The channel holds the model layout (``Stable-diffusion/<name>.safetensors`` or a diffusers
folder), or a ``model.tar.gz`` of it, which is unpacked into scratch space first. Loading goes
through the inference package's loader so training and serving read models the same way.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from easel_training.errors import TrainingInputError

Arch = Literal["sd", "sdxl"]


@dataclass
class BaseModel:
    name: str
    path: Path
    pipe: Any
    arch: Arch
    prediction_type: str
    native_resolution: int


def _unpack_archives(channel: Path, scratch: Path) -> Path:
    """If the channel is a model.tar.gz (and not an unpacked layout), unpack it safely."""
    archives = sorted(channel.glob("*.tar.gz")) + sorted(channel.glob("*.tgz"))
    if not archives or (channel / "Stable-diffusion").is_dir():
        return channel
    if len(archives) > 1:
        raise TrainingInputError(
            f"input channel 'model' holds {len(archives)} archives "
            f"({', '.join(a.name for a in archives[:5])}); pass one model.tar.gz")
    target = scratch / "model"
    marker = target / ".unpacked"
    if not marker.exists():
        target.mkdir(parents=True, exist_ok=True)
        try:
            with tarfile.open(archives[0]) as archive:
                archive.extractall(target, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise TrainingInputError(
                f"input channel 'model': cannot unpack {archives[0].name} "
                f"({type(exc).__name__}: {exc})") from exc
        marker.touch()
    return target


def find_base_checkpoints(channel: Path, scratch: Path) -> dict[str, Path]:
    from easel_inference.loader import find_checkpoints

    if not channel.is_dir():
        raise TrainingInputError(
            f"input channel 'model' is missing: expected the base model under {channel} "
            "(Stable-diffusion/<name>.safetensors or a model.tar.gz)")
    root = _unpack_archives(channel, scratch)
    found = find_checkpoints(root)
    if not found:
        raise TrainingInputError(
            "input channel 'model' has no base model: expected "
            "Stable-diffusion/<name>.safetensors|.ckpt or Stable-diffusion/<name>/model_index.json")
    return dict(found)


def choose_checkpoint(found: dict[str, Path], wanted: str) -> tuple[str, Path]:
    names = sorted(found)
    if not wanted:
        if len(found) == 1:
            return names[0], found[names[0]]
        raise TrainingInputError(
            f"hyperparameter 'checkpoint': the model channel holds {len(found)} models; choose "
            f"one of: {', '.join(names[:20])}")
    if wanted in found:
        return wanted, found[wanted]
    stem = Path(wanted).stem if Path(wanted).suffix in (".safetensors", ".ckpt") else wanted
    if stem in found:
        return stem, found[stem]
    raise TrainingInputError(
        f"hyperparameter 'checkpoint': unknown model {wanted!r}; the model channel holds: "
        f"{', '.join(names[:20]) or 'nothing'}")


def describe_pipeline(pipe: Any) -> tuple[Arch, str, int]:
    arch: Arch = "sdxl" if getattr(pipe, "text_encoder_2", None) is not None else "sd"
    prediction_type = pipe.scheduler.config.get("prediction_type", "epsilon")
    vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    native = int(pipe.unet.config.sample_size) * vae_scale
    return arch, prediction_type, native


def load_base_model(channel: Path, scratch: Path, wanted: str) -> BaseModel:
    from easel_inference.loader import load_pipeline

    name, path = choose_checkpoint(find_base_checkpoints(channel, scratch), wanted)
    try:
        pipe = load_pipeline(path, device="cpu", dtype=torch.float32)
    except TrainingInputError:
        raise
    except Exception as exc:  # the loader's own errors: corrupt file, unknown architecture
        raise TrainingInputError(
            f"base model {name!r} ({path.name}) could not be loaded: "
            f"{type(exc).__name__}: {str(exc)[:300]}") from exc
    arch, prediction_type, native = describe_pipeline(pipe)
    return BaseModel(name=name, path=path, pipe=pipe, arch=arch,
                     prediction_type=prediction_type, native_resolution=native)
