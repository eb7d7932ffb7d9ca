"""The model manifest: a small JSON file beside each model in the bucket.

The portal cannot range-read inside a ``model.tar.gz`` (gzip streams have no index), so whoever
writes a model writes what it holds beside it: ``scripts/upload_model`` for uploads, the training
job for its results. The portal reads it to show each model's family and size; a model without one
gets a clear message instead of a guess. A training job's manifest lists its LoRA (``loras``) or
its fine-tuned checkpoint; the job also writes it where the portal reads it while the job's
archive is still packed (``training_manifest_key``).

Where it lives (``manifest_key``): ``models/<name>/model.tar.gz`` and the uncompressed prefix
``models/<name>/`` -> ``models/<name>/easel-model.json`` (the server ignores it: it lists only
``Stable-diffusion/``, ``Lora/``, ...); another archive ``models/<x>.tar.gz`` ->
``models/<x>.easel-model.json``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from easel_contracts.families import Component, ModelFamily, Prediction, facts_for

MANIFEST_NAME = "easel-model.json"
MANIFEST_MAX_BYTES = 1024 * 1024  # readers refuse anything larger: a manifest is a few KB


class ManifestError(ValueError):
    """A manifest is missing, too large or malformed; the message says what to do."""


class ManifestCheckpoint(BaseModel):
    """One entry of ``Stable-diffusion/``: a single file or a diffusers folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    path: str = Field(min_length=1, max_length=1024, description="path inside the model layout")
    family: ModelFamily
    prediction: Prediction | None = None
    inpainting: bool = False
    components: tuple[Component, ...] = ()

    @property
    def label(self) -> str:
        return facts_for(self.family).label


class ManifestFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(min_length=1, max_length=1024)
    bytes: int = Field(ge=0)


class ManifestLora(BaseModel):
    """One entry of ``Lora/`` that a training job wrote: the LoRA and the family it adapts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    path: str = Field(min_length=1, max_length=1024, description="path inside the model layout")
    family: ModelFamily = Field(description="the family of the base model it was trained on")
    key_format: Literal["kohya", "diffusers"]
    rank: int = Field(ge=1)
    base_model: str = Field(max_length=200, description="the base model's name")


class ModelManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    name: str = Field(min_length=1, max_length=200)
    layout: Literal["archive", "folder"]
    written_by: Literal["upload_model", "training"]
    checkpoints: tuple[ManifestCheckpoint, ...] = ()
    loras: tuple[ManifestLora, ...] = ()
    files: tuple[ManifestFile, ...] = ()

    @model_validator(mode="after")
    def _holds_a_model(self) -> ModelManifest:
        if not self.checkpoints and not self.loras:
            raise ValueError("checkpoints: a manifest lists at least one checkpoint or LoRA")
        return self

    @property
    def total_bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    @property
    def families(self) -> tuple[ModelFamily, ...]:
        """Families of the checkpoints (then of the LoRAs), first-seen order, each once."""
        return tuple(dict.fromkeys([*(c.family for c in self.checkpoints),
                                    *(lora.family for lora in self.loras)]))

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def manifest_key(model_key: str) -> str:
    """The manifest's key beside a model: ``<folder>/model.tar.gz`` and the prefix
    ``<folder>/`` -> ``<folder>/easel-model.json``; any other archive ``<x>.tar.gz`` (or
    ``.tgz``) -> ``<x>.easel-model.json``, so two archives in one folder never share one."""
    if model_key.endswith("/"):
        return model_key + MANIFEST_NAME
    folder, slash, base = model_key.rpartition("/")
    if base == "model.tar.gz":
        return f"{folder}{slash}{MANIFEST_NAME}"
    for suffix in (".tar.gz", ".tgz"):
        if base.endswith(suffix):
            return f"{folder}{slash}{base[: -len(suffix)]}.{MANIFEST_NAME}"
    raise ManifestError(f"{model_key}: not a model archive (.tar.gz) or prefix (ending in /)")


def training_manifest_key(job: str) -> str:
    """Where a training job's manifest is readable without its ``model.tar.gz``: the job writes it
    into its checkpoints folder, which SageMaker syncs to ``training/<job>/checkpoints/`` (and
    into the archive beside the result)."""
    return f"training/{job}/checkpoints/{MANIFEST_NAME}"


def parse_manifest(raw: bytes, *, where: str) -> ModelManifest:
    if len(raw) > MANIFEST_MAX_BYTES:
        raise ManifestError(f"{where}: larger than {MANIFEST_MAX_BYTES} bytes; not a manifest")
    try:
        return ModelManifest.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(root)"
        raise ManifestError(f"{where}: not a valid model manifest ({field}: {first['msg']}); "
                            "upload the model again with scripts/upload_model") from None
