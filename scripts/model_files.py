"""Check model files without loading them: safetensors headers, model family, `.ckpt` conversion.

A safetensors file starts with an 8-byte little-endian header length and a JSON header that names
every tensor with its dtype, shape and byte range. Everything here reads only that header, so a
7 GB checkpoint is checked in milliseconds. Pickle files (`.ckpt`, `.pt`, `.pth`, `.bin`) are
never unpickled freely: they are converted through torch's weights-only loader or refused.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from easel_contracts.families import (
    FAMILIES,
    Detection,
    FamilyError,
    ModelFamily,
    NoDenoiserError,
    detect_checkpoint,
    detect_diffusers_folder,
)

MAX_HEADER_BYTES = 100 * 1024 * 1024
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"

SD1, SD2, SDXL = (FAMILIES[f].label for f in (ModelFamily.SD1, ModelFamily.SD2, ModelFamily.SDXL))
CHECKPOINT, LORA, CONTROLNET, VAE, UNKNOWN = "checkpoint", "lora", "controlnet", "vae", "unknown"
TEXT_ENCODER = "text encoder"
_LORA_MARKERS = (".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", ".hada_w", ".lokr_w",
                 "lora.down.", "lora.up.")


class ModelFileError(ValueError):
    """A model file cannot be used; the message names the file and says why."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelFacts:
    """What a file is: its kind (checkpoint, lora, ...) and, when it can be told, its family."""

    kind: str
    family: str | None
    detection: Detection | None = None
    problem: str | None = None  # why a checkpoint has no family (unknown or mixed)

    def describe(self) -> str:
        return f"{self.family} {self.kind}" if self.family else self.kind


def read_safetensors_header(path: Path) -> SafetensorsHeader:
    """Parse and check the header: valid JSON, sane sizes, byte ranges inside the file."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) != 8:
                raise ModelFileError(f"{path.name}: too short to be a safetensors file")
            (length,) = struct.unpack("<Q", prefix)
            if length < 2 or length > MAX_HEADER_BYTES or 8 + length > size:
                raise ModelFileError(
                    f"{path.name}: not a safetensors file (header length {length} does not fit "
                    f"a {size}-byte file)"
                )
            raw = handle.read(length)
    except OSError as exc:
        raise ModelFileError(f"{path.name}: cannot read it: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ModelFileError(f"{path.name}: the safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path.name}: the safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    tensors: dict[str, TensorInfo] = {}
    data_size = size - 8 - length
    end_max = 0
    for name, entry in header.items():
        try:
            dtype = str(entry["dtype"])
            shape = tuple(int(x) for x in entry["shape"])
            start, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ModelFileError(f"{path.name}: tensor {name!r} has a malformed entry") from None
        if not 0 <= start <= end <= data_size:
            raise ModelFileError(
                f"{path.name}: tensor {name!r} points outside the file (truncated download?)"
            )
        end_max = max(end_max, end)
        tensors[name] = TensorInfo(dtype=dtype, shape=shape)
    if not tensors:
        raise ModelFileError(f"{path.name}: holds no tensors")
    if end_max != data_size:
        raise ModelFileError(
            f"{path.name}: the file is {data_size - end_max:+d} bytes off its header "
            "(truncated or padded download?)"
        )
    return SafetensorsHeader(path=path, tensors=tensors,
                             metadata={str(k): str(v) for k, v in dict(metadata).items()})


def lora_family(tensors: dict[str, TensorInfo]) -> str | None:
    names = tensors.keys()
    if any(n.startswith(("lora_te1_", "lora_te2_", "te1.", "te2.", "text_encoder_2."))
           for n in names):
        return SDXL
    return None


def classify(header: SafetensorsHeader) -> ModelFacts:
    tensors = header.tensors
    names = list(tensors)
    if any(marker in n for n in names for marker in _LORA_MARKERS) or any(
        n.startswith(("lora_unet_", "lora_te_")) for n in names
    ):
        return ModelFacts(LORA, lora_family(tensors))
    if any(n.startswith("control_model.") or "controlnet_cond_embedding" in n
           or "input_hint_block" in n for n in names):
        return ModelFacts(CONTROLNET, None)
    try:
        detection = detect_checkpoint({n: info.shape for n, info in tensors.items()},
                                      name=header.path.name)
    except NoDenoiserError as exc:
        if any(n.startswith("model.diffusion_model.") for n in names):
            return ModelFacts(CHECKPOINT, None, problem=str(exc))
    except FamilyError as exc:  # a denoiser of an unsupported family, or mixed families
        return ModelFacts(CHECKPOINT, None, problem=str(exc))
    else:
        return ModelFacts(CHECKPOINT, detection.facts.label, detection=detection)
    vae_prefixes = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.",
                    "first_stage_model.")
    if all(n.startswith(vae_prefixes) for n in names):
        return ModelFacts(VAE, None)
    return ModelFacts(UNKNOWN, None)


def inspect_safetensors(path: Path) -> ModelFacts:
    return classify(read_safetensors_header(path))


def diffusers_detection(folder: Path) -> Detection:
    """The family of a diffusers pipeline folder (model_index.json and component configs)."""
    try:
        return detect_diffusers_folder(folder)
    except FamilyError as exc:
        raise ModelFileError(str(exc)) from None


def sentencepiece_pieces(path: Path) -> int:
    """How many pieces a SentencePiece model holds: the count of field 1 (``pieces``) of its
    ``ModelProto`` (read with a minimal protobuf walk; the sentencepiece package is not needed)."""
    data = path.read_bytes()
    position, pieces = 0, 0

    def varint() -> int:
        nonlocal position
        value, shift = 0, 0
        while True:
            if position >= len(data) or shift > 63:
                raise ModelFileError(f"{path.name}: not a SentencePiece model (damaged)")
            byte = data[position]
            position += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while position < len(data):
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            varint()
        elif wire == 1:
            position += 8
        elif wire == 5:
            position += 4
        elif wire == 2:
            length = varint()  # read first: varint() moves position
            position += length
        else:
            raise ModelFileError(f"{path.name}: not a SentencePiece model (wire type {wire})")
        if position > len(data):
            raise ModelFileError(f"{path.name}: not a SentencePiece model (truncated)")
        pieces += field == 1 and wire == 2
    if not pieces:
        raise ModelFileError(f"{path.name}: not a SentencePiece model (no pieces)")
    return pieces


def t5_embedding_rows(tensors: dict[str, TensorInfo]) -> int | None:
    for name in ("shared.weight", "encoder.embed_tokens.weight"):
        info = tensors.get(name)
        if info is not None and len(info.shape) == 2:
            return info.shape[0]
    return None


# --- pickle checkpoints

def _refusal_detail(exc: Exception) -> str:
    text = str(exc)
    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if match:
        return f"it needs the pickled Python class {match.group(1)}"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return first[:200]


def _unpickler_detail(exc: Exception) -> str:
    match = re.search(r"(Unpickler error: [^\n]+|Unsupported operand[^\n]*)", str(exc))
    return match.group(1).strip()[:200] if match else "the pickle stream is damaged"


def _tensor_dict(loaded: Any, path: Path) -> dict[str, Any]:
    import torch

    state = loaded
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        state = loaded["state_dict"]
    if not isinstance(state, dict):
        raise ModelFileError(f"{path.name}: holds a {type(state).__name__}, not a dict of tensors")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelFileError(f"{path.name}: holds no tensors")
    # safetensors stores each tensor once: give tensors that share memory their own copy.
    seen: set[tuple[int, int]] = set()
    for name, tensor in tensors.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen or not tensor.is_contiguous():
            tensors[name] = tensor.contiguous().clone()
        else:
            seen.add(key)
    return tensors


def convert_pickle_to_safetensors(source: Path, target: Path) -> Path:
    """Load `source` with torch's weights-only unpickler and write `target` as safetensors.

    Refuses (ModelFileError) a file that needs arbitrary Python classes: unpickling those could
    run code from the file.
    """
    import pickle

    try:
        import torch
        from safetensors.torch import save_file
    except ImportError:
        raise ModelFileError(
            f"{source.name}: converting a pickle checkpoint needs torch and safetensors "
            "(`pip install torch safetensors`), or upload a .safetensors file instead"
        ) from None

    try:
        try:
            loaded = torch.load(source, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            loaded = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):
            raise ModelFileError(
                f"{source.name}: not a readable PyTorch checkpoint ({_unpickler_detail(exc)})"
            ) from None
        raise ModelFileError(
            f"{source.name}: refused: {_refusal_detail(exc)}, which a weights-only load will not "
            "run (unpickling arbitrary classes can execute code from the file). Get a "
            ".safetensors version of the model, or convert it yourself where you trust the file."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelFileError(
            f"{source.name}: not a readable PyTorch checkpoint ({_refusal_detail(exc)})"
        ) from None
    tensors = _tensor_dict(loaded, source)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    save_file(tensors, str(partial), metadata={"format": "pt", "converted_from": source.name})
    os.replace(partial, target)
    return target
