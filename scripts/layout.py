"""Turn what the user points at into the model layout Easel serves, checking every file.

Inputs: a single checkpoint file, a diffusers pipeline folder (model_index.json), or an A1111
`models/` folder (Stable-diffusion/, Lora/, ControlNet/, VAE/). `.ckpt`-style pickles are converted
to safetensors in a work folder (through a weights-only load) or refused with the reason.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from easel_contracts.families import (
    SEPARATE_PARTS,
    T5_TOKENIZER,
    missing_parts,
    t5_tokenizer_problem,
)
from easel_contracts.model_manifest import ManifestCheckpoint, ManifestFile, ModelManifest
from scripts.model_files import (
    CHECKPOINT,
    CONTROLNET,
    LORA,
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIX,
    TEXT_ENCODER,
    UNKNOWN,
    VAE,
    ModelFacts,
    ModelFileError,
    convert_pickle_to_safetensors,
    diffusers_detection,
    inspect_safetensors,
    read_safetensors_header,
    sentencepiece_pieces,
    t5_embedding_rows,
)

LAYOUT_FOLDERS = ("Stable-diffusion", "Lora", "ControlNet", "VAE", "text_encoder")
_FOLDER_KIND = {"Stable-diffusion": CHECKPOINT, "Lora": LORA, "ControlNet": CONTROLNET, "VAE": VAE,
                "text_encoder": TEXT_ENCODER}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# Small side files that travel with weights (configs, tokenizers, model cards).
_SIDE_SUFFIXES = (".json", ".yaml", ".yml", ".txt", ".md", ".model")


@dataclass(frozen=True)
class PlannedFile:
    """One file of the upload: where it comes from and its path inside the layout."""

    arcname: str
    source: Path
    size: int
    mtime: int
    note: str = ""


@dataclass(frozen=True)
class Plan:
    name: str
    files: tuple[PlannedFile, ...]
    notes: tuple[str, ...] = ()

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def fingerprint(self, *extra: object) -> str:
        """Identifies the exact bytes to upload, so a resumed upload never mixes two sources."""
        parts = [(f.arcname, f.size, f.mtime) for f in self.files]
        blob = json.dumps([parts, [str(e) for e in extra]], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


def check_name(value: str, *, field: str = "--name") -> str:
    if not NAME_RE.match(value or ""):
        raise ModelFileError(
            f"{field}: {value!r} is not a usable name: 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def default_name(path: Path) -> str:
    stem = path.name
    for suffix in (SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "model"
    return cleaned[:100]


class Planner:
    """Builds a Plan; `converted_dir` receives safetensors made from pickle checkpoints."""

    def __init__(self, *, converted_dir: Path, say: Callable[[str], None] = lambda _m: None):
        self.converted_dir = converted_dir
        self.say = say
        self.notes: list[str] = []

    # --- single files

    def _safetensors_for(self, path: Path, arcname_stem: str) -> tuple[Path, str, int]:
        """(safetensors path, note, mtime) for a file that is safetensors or a pickle."""
        mtime = int(path.stat().st_mtime)
        if path.name.endswith(SAFETENSORS_SUFFIX):
            return path, "", mtime
        if path.name.endswith(PICKLE_SUFFIXES):
            digest = hashlib.sha256(f"{path.resolve()}:{path.stat().st_size}:{mtime}".encode())
            target = self.converted_dir / digest.hexdigest()[:16] / f"{arcname_stem}.safetensors"
            if not target.is_file():
                self.say(f"converting {path.name} to safetensors (weights-only load) ...")
                convert_pickle_to_safetensors(path, target)
            return target, f"converted from {path.name}", mtime
        raise ModelFileError(
            f"{path.name}: not a model file (expected .safetensors, or .ckpt/.pt/.pth/.bin to "
            "convert)"
        )

    def _checked(self, path: Path, *, expected: str, where: str) -> ModelFacts:
        facts = inspect_safetensors(path)
        if expected == CHECKPOINT:
            if facts.kind == LORA:
                raise ModelFileError(
                    f"{where}: looks like a LoRA, not a checkpoint: pass --lora to put it into "
                    "the LoRA library, or move it to Lora/"
                )
            if facts.kind != CHECKPOINT or facts.family is None:
                raise ModelFileError(
                    f"{where}: not a checkpoint of a supported family: "
                    f"{facts.problem or f'it looks like a {facts.describe()}'}"
                )
        elif expected == TEXT_ENCODER:
            if facts.kind not in (UNKNOWN, VAE):  # text encoders have no marker of their own
                raise ModelFileError(f"{where}: expected a text encoder, but it looks like a "
                                     f"{facts.describe()}")
        elif facts.kind != expected and not (expected == VAE and facts.kind == UNKNOWN):
            raise ModelFileError(f"{where}: expected a {expected}, but it looks like a "
                                 f"{facts.describe()}")
        return facts

    def _file(self, path: Path, *, arcname: str, expected: str) -> PlannedFile:
        folder, _, stem = arcname.rpartition("/")
        stem = default_name(Path(stem))
        arcname = f"{folder}/{stem}.safetensors" if folder else f"{stem}.safetensors"
        source, note, mtime = self._safetensors_for(path, stem)
        facts = self._checked(source, expected=expected, where=str(path))
        note = ", ".join(x for x in (facts.describe(), note) if x)
        return PlannedFile(arcname, source, source.stat().st_size, mtime, note)

    def _side_file(self, path: Path, arcname: str) -> PlannedFile:
        return PlannedFile(arcname, path, path.stat().st_size, int(path.stat().st_mtime))

    # --- whole inputs

    def plan(self, path: Path, *, name: str | None, lora: bool) -> Plan:
        path = path.expanduser()
        if not path.exists():
            raise ModelFileError(f"{path}: no such file or folder")
        if lora:
            return self._plan_loras(path, name=name)
        if path.is_file():
            return self._plan_checkpoint(path, name=name)
        if (path / "model_index.json").is_file():
            return self._plan_diffusers(path, name=name)
        root = path / "models" if (path / "models" / "Stable-diffusion").is_dir() else path
        if any((root / folder).is_dir() for folder in LAYOUT_FOLDERS):
            return self._plan_a1111(root, name=name or default_name(path))
        raise ModelFileError(
            f"{path}: not a checkpoint file, a diffusers folder (with model_index.json) or an "
            "A1111 models folder (with Stable-diffusion/, Lora/, ControlNet/ or VAE/)"
        )

    def _plan_checkpoint(self, path: Path, *, name: str | None) -> Plan:
        name = check_name(name or default_name(path))
        files = [self._file(path, arcname=f"Stable-diffusion/{name}", expected=CHECKPOINT)]
        stem = path.name.rsplit(".", 1)[0]
        for yaml_path in (path.with_name(f"{stem}.yaml"), path.with_name(f"{stem}.yml")):
            if yaml_path.is_file():
                files.append(self._side_file(yaml_path, f"Stable-diffusion/{name}.yaml"))
                break
        return Plan(name=name, files=tuple(files), notes=tuple(self.notes))

    def _diffusers_files(self, folder: Path, prefix: str) -> list[PlannedFile]:
        files: list[PlannedFile] = []
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            relative = path.relative_to(folder)
            if any(part.startswith(".") for part in relative.parts):
                continue
            sub = "/".join(relative.parts[:-1])
            base = f"{prefix}/{sub}" if sub else prefix
            if path.name.endswith(SAFETENSORS_SUFFIX):
                inspect_safetensors(path)  # readable header, sane byte ranges
                files.append(self._side_file(path, f"{base}/{path.name}"))
            elif path.name.endswith(PICKLE_SUFFIXES):
                stem = path.name.rsplit(".", 1)[0]
                stem = "model" if stem == "pytorch_model" else stem
                source, note, mtime = self._safetensors_for(path, stem)
                inspect_safetensors(source)
                files.append(PlannedFile(f"{base}/{stem}.safetensors", source,
                                         source.stat().st_size, mtime, note))
            elif path.name.endswith(_SIDE_SUFFIXES) or path.name in ("merges.txt",):
                files.append(self._side_file(path, f"{base}/{path.name}"))
            else:
                self.notes.append(f"skipped {path} (not a weight or config file)")
        return files

    def _plan_diffusers(self, folder: Path, *, name: str | None) -> Plan:
        name = check_name(name or default_name(folder))
        family = diffusers_detection(folder).facts.label
        self.notes.append(f"{folder.name}: diffusers {family} pipeline")
        files = self._diffusers_files(folder, f"Stable-diffusion/{name}")
        return Plan(name=name, files=tuple(files), notes=tuple(self.notes))

    def _plan_a1111(self, root: Path, *, name: str) -> Plan:
        name = check_name(name)
        files: list[PlannedFile] = []
        for folder in LAYOUT_FOLDERS:
            directory = root / folder
            if not directory.is_dir():
                continue
            for entry in sorted(directory.iterdir()):
                if entry.name.startswith("."):
                    continue
                where = f"{folder}/{entry.name}"
                if entry.is_dir():
                    if (entry / "model_index.json").is_file() or (entry / "config.json").is_file():
                        files.extend(self._diffusers_files(entry, f"{folder}/{entry.name}"))
                    else:
                        self.notes.append(f"skipped {where}/ (no model_index.json/config.json)")
                elif entry.name.endswith((SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES)):
                    stem = default_name(entry)
                    files.append(self._file(entry, arcname=f"{folder}/{stem}",
                                            expected=_FOLDER_KIND[folder]))
                elif entry.name.endswith((".yaml", ".yml")):
                    files.append(self._side_file(entry, f"{folder}/{entry.stem}.yaml"))
                elif folder == "text_encoder" and entry.name.endswith(".model"):
                    files.append(self._side_file(entry, f"{folder}/{entry.name}"))
                else:
                    self.notes.append(f"skipped {where} (not a model file)")
        if not any(f.arcname.startswith("Stable-diffusion/") for f in files):
            raise ModelFileError(
                f"{root}: Stable-diffusion/ holds no checkpoint; an endpoint needs at least one"
            )
        return Plan(name=name, files=tuple(files), notes=tuple(self.notes))

    def _plan_loras(self, path: Path, *, name: str | None) -> Plan:
        if path.is_file():
            stem = check_name(name or default_name(path))
            files = [self._file(path, arcname=stem, expected=LORA)]
            return Plan(name=stem, files=tuple(files), notes=tuple(self.notes))
        if name:
            raise ModelFileError("--name applies to a single LoRA file, not a folder")
        folder = path / "Lora" if (path / "Lora").is_dir() else path
        candidates = sorted(p for p in folder.iterdir()
                            if p.is_file() and p.name.endswith((SAFETENSORS_SUFFIX,
                                                                *PICKLE_SUFFIXES)))
        if not candidates:
            raise ModelFileError(f"{folder}: holds no .safetensors (or .ckpt/.pt) LoRA files")
        files = [self._file(p, arcname=check_name(default_name(p)), expected=LORA)
                 for p in candidates]
        return Plan(name=folder.name, files=tuple(files), notes=tuple(self.notes))


def _check_t5_tokenizer(plan: Plan) -> None:
    sources = {f.arcname: f.source for f in plan.files}
    encoder = sources.get(SEPARATE_PARTS["t5xxl"])
    tokenizer = sources.get(T5_TOKENIZER)
    if encoder is None or tokenizer is None:
        return
    rows = t5_embedding_rows(read_safetensors_header(encoder).tensors)
    if rows is None:
        raise ModelFileError(f"{SEPARATE_PARTS['t5xxl']}: no T5 token embedding (shared.weight)")
    problem = t5_tokenizer_problem(rows, sentencepiece_pieces(tokenizer))
    if problem:
        raise ModelFileError(problem)


def build_manifest(plan: Plan, *, layout: str) -> ModelManifest:
    """What the planned model holds, for the manifest written beside it: each checkpoint's
    family (from its tensor names or model_index.json, as checked while planning) and every
    file's size."""
    checkpoints: list[ManifestCheckpoint] = []
    for entry in plan.files:
        parts = entry.arcname.split("/")
        if parts[0] != "Stable-diffusion":
            continue
        if len(parts) == 2 and entry.arcname.endswith(SAFETENSORS_SUFFIX):
            detection = inspect_safetensors(entry.source).detection
            name = parts[1][: -len(SAFETENSORS_SUFFIX)]
        elif len(parts) == 3 and parts[2] == "model_index.json":
            detection = diffusers_detection(entry.source.parent)
            name = parts[1]
        else:
            continue
        if detection is None:
            raise ModelFileError(f"{entry.arcname}: no model family could be detected")
        if len(parts) == 2:
            missing = missing_parts(detection, (f.arcname for f in plan.files))
            if missing:
                raise ModelFileError(
                    f"{entry.arcname}: a {detection.facts.label} checkpoint without "
                    f"{', '.join(missing)}; upload an A1111 models folder that holds "
                    f"{'it' if len(missing) == 1 else 'them'} beside Stable-diffusion/")
        checkpoints.append(ManifestCheckpoint(
            name=name, path="/".join(parts[:2]), family=detection.family,
            prediction=detection.prediction, inpainting=detection.inpainting,
            components=detection.components,
        ))
    if not checkpoints:
        raise ModelFileError(f"{plan.name}: Stable-diffusion/ holds no checkpoint")
    _check_t5_tokenizer(plan)
    return ModelManifest(
        name=plan.name, layout=layout, written_by="upload_model", checkpoints=tuple(checkpoints),
        files=tuple(ManifestFile(path=f.arcname, bytes=f.size) for f in plan.files),
    )
