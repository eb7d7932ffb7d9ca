"""Choosing and loading the base model from the ``model`` channel, offline.

The channel holds the model layout (``Stable-diffusion/<name>.safetensors`` or a diffusers
folder), or a ``model.tar.gz`` of it, which is unpacked into scratch space first. The family is
detected from the model itself (``easel_contracts.families``: tensor names of a single file, or a
diffusers folder's ``model_index.json``), never from a name the user gives. Loading goes through
the inference package's loader (the training image installs it) so training and serving read
models the same way, single files and diffusers folders of every family alike, offline.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from easel_contracts.families import (
    FamilyError,
    ModelFamily,
    detect_checkpoint,
    detect_diffusers_folder,
    facts_for,
)

from easel_training.errors import TrainingInputError

Arch = Literal["sd", "sdxl", "sd3", "flux"]
FLOW_ARCHES = ("sd3", "flux")
# the families the job trains, by the trainer that handles them
TRAINED_FAMILIES = {
    ModelFamily.SD1: "sd", ModelFamily.SD2: "sd", ModelFamily.SDXL: "sdxl",
    ModelFamily.SD35_MEDIUM: "sd3", ModelFamily.SD35_LARGE: "sd3",
    ModelFamily.FLUX_DEV: "flux", ModelFamily.FLUX_SCHNELL: "flux",
}


@dataclass
class BaseModel:
    name: str
    path: Path
    pipe: Any
    arch: Arch
    prediction_type: str
    native_resolution: int
    family: ModelFamily

    @property
    def flow(self) -> bool:
        """A flow-matching family (SD3.5, FLUX.1): a transformer trained on rectified flow."""
        return self.arch in FLOW_ARCHES


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


def detect_family(path: Path) -> ModelFamily | None:
    """The family of a base model from its own contents; None for a ``.ckpt`` (a pickle is read
    only by the loader's weights-only load; its family comes from the loaded pipeline)."""
    try:
        if path.is_dir():
            return detect_diffusers_folder(path).family
        if path.suffix != ".safetensors":
            return None
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            names = handle.keys()
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in names}
        return detect_checkpoint(shapes, name=path.name).family
    except FamilyError as exc:
        raise TrainingInputError(f"base model: {exc}") from None
    except (OSError, ValueError, RuntimeError) as exc:  # unreadable header: the loader says more
        del exc
        return None


def _pipeline_family(pipe: Any) -> ModelFamily:
    transformer = getattr(pipe, "transformer", None)
    if transformer is not None:
        config = transformer.config
        if hasattr(config, "guidance_embeds"):
            return ModelFamily.FLUX_DEV if config.guidance_embeds else ModelFamily.FLUX_SCHNELL
        return (ModelFamily.SD35_MEDIUM if config.get("dual_attention_layers")
                else ModelFamily.SD35_LARGE)
    if getattr(pipe, "text_encoder_2", None) is not None:
        return ModelFamily.SDXL
    prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
    return ModelFamily.SD2 if prediction == "v_prediction" else ModelFamily.SD1


def trained_arch(family: ModelFamily) -> Arch:
    """The trainer for a family; a family the job does not train is refused."""
    arch = TRAINED_FAMILIES.get(family)
    if arch is None:
        trained = ", ".join(dict.fromkeys(facts_for(f).label for f in TRAINED_FAMILIES))
        raise TrainingInputError(f"the base model is {facts_for(family).label}; training takes "
                                 f"{trained} base models")
    return arch  # type: ignore[return-value]


def describe_pipeline(pipe: Any, family: ModelFamily) -> tuple[Arch, str, int]:
    arch = trained_arch(family)
    vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    if arch in FLOW_ARCHES:
        sample_size = pipe.transformer.config.get("sample_size")
        native = int(sample_size) * vae_scale if sample_size else facts_for(family).resolution
        return arch, "flow", native
    prediction_type = pipe.scheduler.config.get("prediction_type", "epsilon")
    native = int(pipe.unet.config.sample_size) * vae_scale
    return arch, prediction_type, native


def load_base_model(channel: Path, scratch: Path, wanted: str, *,
                    flow_dtype: torch.dtype = torch.float32) -> BaseModel:
    """The chosen base model on the CPU: float32, except the flow families (LoRA-only, frozen
    base), which load in ``flow_dtype`` (the job's training precision) so a 12B FLUX
    transformer and its T5 take half the host memory."""
    from easel_inference.loader import load_pipeline

    name, path = choose_checkpoint(find_base_checkpoints(channel, scratch), wanted)
    family = detect_family(path)
    flow = family is not None and trained_arch(family) in FLOW_ARCHES
    dtype = flow_dtype if flow else torch.float32
    try:
        pipe = load_pipeline(path, device="cpu", dtype=dtype)
    except Exception as exc:  # the loader's own errors: corrupt file, unknown architecture
        raise TrainingInputError(
            f"base model {name!r} ({path.name}) could not be loaded: "
            f"{type(exc).__name__}: {str(exc)[:300]}") from exc
    family = family or _pipeline_family(pipe)
    arch, prediction_type, native = describe_pipeline(pipe, family)
    return BaseModel(name=name, path=path, pipe=pipe, arch=arch, prediction_type=prediction_type,
                     native_resolution=native, family=family)
