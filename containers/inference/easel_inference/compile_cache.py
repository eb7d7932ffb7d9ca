"""torch's compile artifacts kept in S3, so only an endpoint's first instance compiles.

Before its warm-up the server downloads the artifacts saved for its key
(``easel_contracts.compile_cache``: GPU, torch, diffusers, model hash) and hands them to
``torch.compiler.load_cache_artifacts``; the compile during warm-up then reads Inductor's kernels
(and autotuning results) from them instead of building them. When nothing was there, it saves
``torch.compiler.save_cache_artifacts()`` after the warm-up. Any failure is logged and the server
compiles as it would without the cache.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from easel_contracts.compile_cache import CompileCacheKey
from easel_contracts.s3uri import S3Uri

log = logging.getLogger("easel.inference")
_SAMPLE = 64 * 1024


class Artifacts(Protocol):
    def save(self) -> bytes | None: ...

    def load(self, data: bytes) -> None: ...


class TorchArtifacts:
    """torch.compiler's portable cache: Inductor's compiled kernels and autotuning results."""

    def save(self) -> bytes | None:
        import torch

        saved = torch.compiler.save_cache_artifacts()
        return saved[0] if saved else None

    def load(self, data: bytes) -> None:
        import torch

        torch.compiler.load_cache_artifacts(data)


def model_hash(path: Path) -> str:
    """A cheap fingerprint of a checkpoint file (its size and 64 KiB at its start, at 1 MiB and
    at its end: the header names every tensor and its shape) or a diffusers
    folder (its files' names and sizes, and its model_index.json): 16 hex digits."""
    digest = hashlib.sha256()
    if path.is_file():
        size = path.stat().st_size
        digest.update(str(size).encode())
        with path.open("rb") as handle:
            digest.update(handle.read(_SAMPLE))
            handle.seek(min(size, 0x100000))
            digest.update(handle.read(_SAMPLE))
            handle.seek(max(0, size - _SAMPLE))
            digest.update(handle.read(_SAMPLE))
    else:
        for item in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{item.relative_to(path).as_posix()}:{item.stat().st_size};".encode())
        index = path / "model_index.json"
        if index.is_file():
            digest.update(index.read_bytes())
    return digest.hexdigest()[:16]


def runtime_key(model_path: Path, device: str) -> CompileCacheKey:
    """The key of this process's compile artifacts for ``model_path`` on ``device``."""
    import diffusers
    import torch

    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    return CompileCacheKey(gpu=gpu, torch=torch.__version__, diffusers=diffusers.__version__,
                           model_hash=model_hash(model_path))


@dataclass
class CompileCache:
    """The artifacts of one key under ``prefix`` (an ``s3://bucket/compile-cache/`` URI)."""

    prefix: S3Uri
    key: CompileCacheKey
    client: Any = None
    artifacts: Artifacts = field(default_factory=TorchArtifacts)
    loaded: bool = False

    @property
    def object_key(self) -> str:
        return self.key.key(self.prefix.key)

    def _s3(self) -> Any:
        if self.client is None:
            import boto3

            self.client = boto3.client("s3")
        return self.client

    def load(self) -> bool:
        """Download and load the artifacts; False when there are none or they are unusable."""
        try:
            answer = self._s3().get_object(Bucket=self.prefix.bucket, Key=self.object_key)
            data = answer["Body"].read()
        except Exception as exc:  # noqa: BLE001 - a miss or an S3 failure: compile as usual
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404"):
                log.info("compile cache: nothing at s3://%s/%s yet; this instance compiles and "
                         "saves it", self.prefix.bucket, self.object_key)
            else:
                log.warning("compile cache: cannot read s3://%s/%s (%s); compiling without it",
                            self.prefix.bucket, self.object_key, code or type(exc).__name__)
            return False
        try:
            self.artifacts.load(data)
        except Exception as exc:  # noqa: BLE001 - stale or foreign artifacts: compile as usual
            log.warning("compile cache: artifacts at %s not loaded (%s: %s); compiling",
                        self.object_key, type(exc).__name__, str(exc)[:200])
            return False
        self.loaded = True
        log.info("compile cache: loaded %d bytes from s3://%s/%s", len(data), self.prefix.bucket,
                 self.object_key)
        return True

    def save(self) -> bool:
        """Upload this process's artifacts unless they came from the cache; False when none."""
        if self.loaded:
            return False
        try:
            data = self.artifacts.save()
            if not data:
                log.info("compile cache: no artifacts to save")
                return False
            self._s3().put_object(Bucket=self.prefix.bucket, Key=self.object_key, Body=data)
        except Exception as exc:  # noqa: BLE001 - the next instance compiles again, no harm
            log.warning("compile cache: not saved to s3://%s/%s (%s)", self.prefix.bucket,
                        self.object_key, type(exc).__name__)
            return False
        log.info("compile cache: saved %d bytes to s3://%s/%s", len(data), self.prefix.bucket,
                 self.object_key)
        return True
