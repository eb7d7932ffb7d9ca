"""Writing the result into ``/opt/ml/model``: the LoRA or checkpoint, and training_report.json."""

from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path

import torch
from easel_contracts.families import facts_for
from easel_contracts.hyperparameters import HyperParameters
from easel_contracts.model_manifest import (
    MANIFEST_NAME,
    ManifestCheckpoint,
    ManifestFile,
    ManifestLora,
    ModelManifest,
)
from easel_contracts.progress import REPORT_FILE, TrainingReport
from safetensors.torch import save_file

from easel_training import lora
from easel_training.base_model import BaseModel
from easel_training.paths import JobPaths
from easel_training.progress import write_text_atomically

SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def save_lora_result(*, model_dir: Path, hp: HyperParameters, base: BaseModel,
                     steps: int) -> Path:
    target = model_dir / "Lora" / f"{hp.effective_output_name}.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    return write_lora(target, hp=hp, base=base, steps=steps)


def write_lora(target: Path, *, hp: HyperParameters, base: BaseModel, steps: int) -> Path:
    """The trained adapters as a LoRA file: kohya keys (SD1.x/2.x/SDXL) or diffusers keys
    (SD3.5/FLUX.1), at ``save_precision``, with the ``ss_*`` metadata. The result's
    ``Lora/<name>.safetensors`` and each checkpoint's ``lora.safetensors`` are written here."""
    pipe = base.pipe
    if base.flow:
        state = lora.export_diffusers(pipe.transformer, dtype=SAVE_DTYPES[hp.save_precision])
        save_file(state, str(target), metadata=lora.flow_metadata(
            rank=hp.rank, alpha=hp.effective_alpha, family=base.family,
            output_name=hp.effective_output_name, steps=steps, base_model=base.name))
        return target
    sdxl = base.arch == "sdxl"
    encoders = []
    if hp.train_text_encoder:
        encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if sdxl else [])
    state = lora.export_kohya(pipe.unet, encoders, sdxl=sdxl, dtype=SAVE_DTYPES[hp.save_precision])
    v2 = not sdxl and pipe.text_encoder.config.hidden_act == "gelu"
    metadata = lora.kohya_metadata(rank=hp.rank, alpha=hp.effective_alpha, sdxl=sdxl, v2=v2,
                                   output_name=hp.effective_output_name, steps=steps,
                                   base_model=base.name)
    save_file(state, str(target), metadata=metadata)
    return target


def save_full_result(*, model_dir: Path, hp: HyperParameters, base: BaseModel) -> Path:
    from easel_inference.builder import save_single_file

    pipe = base.pipe
    pipe.to("cpu", SAVE_DTYPES[hp.save_precision])
    target = model_dir / "Stable-diffusion" / f"{hp.effective_output_name}.safetensors"
    return save_single_file(pipe, target)


def build_manifest(*, model_dir: Path, hp: HyperParameters, base: BaseModel,
                   output: Path) -> ModelManifest:
    """What the result folder holds (``easel-model.json``): the LoRA and the family it adapts,
    or the fine-tuned checkpoint, and every file with its size."""
    relative = output.relative_to(model_dir).as_posix()
    files = tuple(ManifestFile(path=path.relative_to(model_dir).as_posix(),
                               bytes=path.stat().st_size)
                  for path in sorted(model_dir.rglob("*"))
                  if path.is_file() and path.name != MANIFEST_NAME)
    name = hp.effective_output_name
    if hp.mode == "lora":
        entries = {"loras": (ManifestLora(
            name=name, path=relative, family=base.family, rank=hp.rank, base_model=base.name,
            key_format="diffusers" if base.flow else "kohya"),)}
    else:
        facts = facts_for(base.family)
        entries = {"checkpoints": (ManifestCheckpoint(
            name=name, path=relative, family=base.family, prediction=base.prediction_type,
            components=("denoiser", "vae", *facts.text_encoders)),)}
    return ModelManifest(name=name, layout="archive", written_by="training", files=files,
                         **entries)


def write_manifest(*, paths: JobPaths, manifest: ModelManifest) -> None:
    """Beside the result (inside the job's model.tar.gz) and in the checkpoints folder, which
    SageMaker syncs to S3 as a plain object the portal reads (``training_manifest_key``)."""
    for folder in (paths.model, paths.checkpoints):
        write_text_atomically(folder / MANIFEST_NAME, manifest.to_json())


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers", "peft", "accelerate", "easel-training",
                 "easel-inference"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_report(model_dir: Path, report: TrainingReport) -> Path:
    target = model_dir / REPORT_FILE
    write_text_atomically(target, report.to_json())
    return target
