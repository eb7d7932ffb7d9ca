"""Moving model data, channels, checkpoints and results between S3 and local folders."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from easel_contracts.s3uri import S3Uri

# Called with the number of bytes just written (download progress).
OnBytes = Callable[[int], None]
_DOWNLOAD_CHUNK = 8 * 1024 * 1024


class S3DataError(Exception):
    """Data could not be fetched from or stored to S3 (message is user-facing)."""


def parse_s3_uri(uri: str, *, field: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key) by the shared parser, with an error naming
    ``field``."""
    try:
        parsed = S3Uri.parse(uri)
    except ValueError as exc:
        raise S3DataError(f"{field} must be an s3://bucket/key URI: {exc}") from None
    return parsed.bucket, parsed.key


def join_s3(uri: str, *parts: str, field: str = "S3 location") -> str:
    """Path parts joined onto an S3 URI with single slashes (by the shared ``S3Uri``)."""
    try:
        return str(S3Uri.parse(uri).join(*parts))
    except ValueError as exc:
        raise S3DataError(f"{field}: {exc}") from None


def list_prefix(s3: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    objects = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        objects.extend(page.get("Contents", []))
    return objects


def _safe_relative(key: str, prefix: str) -> Path | None:
    relative = key[len(prefix) :].lstrip("/")
    if not relative or relative.endswith("/"):
        return None  # the prefix itself, or a "folder" marker object
    parts = PurePosixPath(relative).parts
    if any(part in ("..", ".") for part in parts):
        raise S3DataError(f"refusing the S3 key {key!r}: it escapes its folder")
    return Path(*parts)


def stream_object(
    s3: Any, bucket: str, key: str, destination: Path, on_bytes: OnBytes | None = None
) -> None:
    """One streamed GetObject into ``destination`` (atomic), reporting bytes as they land.

    One sequential stream per object: at the local S3's disk speed this beats many ranged
    GETs, and memory stays at one chunk whatever the object's size.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f".{destination.name}.partial")
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    try:
        with partial.open("wb") as out:
            for chunk in body.iter_chunks(_DOWNLOAD_CHUNK):
                out.write(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
        os.replace(partial, destination)
    finally:
        body.close()
        partial.unlink(missing_ok=True)


def download_prefix(
    s3: Any, uri: str, destination: Path, *, field: str, on_bytes: OnBytes | None = None
) -> int:
    """Download every object under ``uri`` (a key prefix) into ``destination``; count."""
    bucket, prefix = parse_s3_uri(uri, field=field)
    count = 0
    try:
        objects = list_prefix(s3, bucket, prefix)
    except s3.exceptions.NoSuchBucket as exc:
        raise S3DataError(f"{field}: the bucket {bucket!r} does not exist") from exc
    for item in objects:
        key = item["Key"]
        # A prefix "a/b" also matches "a/bc/..."; S3 prefix channels do the same, but a
        # prefix without a trailing slash that names a single object downloads that object.
        if key == prefix:
            relative = None if key.endswith("/") else Path(PurePosixPath(key).name)
        else:
            relative = _safe_relative(key, prefix)
        if relative is None:
            continue
        stream_object(s3, bucket, key, destination / relative, on_bytes)
        count += 1
    return count


def prefix_size(s3: Any, uri: str, *, field: str) -> int:
    """Total bytes under ``uri`` (0 when nothing is there)."""
    bucket, prefix = parse_s3_uri(uri, field=field)
    try:
        return sum(int(item.get("Size", 0)) for item in list_prefix(s3, bucket, prefix))
    except s3.exceptions.NoSuchBucket:
        return 0


def download_object(
    s3: Any, uri: str, destination: Path, *, field: str, on_bytes: OnBytes | None = None
) -> None:
    bucket, key = parse_s3_uri(uri, field=field)
    try:
        stream_object(s3, bucket, key, destination, on_bytes)
    except Exception as exc:  # noqa: BLE001 - botocore raises several kinds; say which object
        raise S3DataError(f"{field}: could not download {uri}: {exc}") from exc


def data_fingerprint(s3: Any, uri: str, *, field: str) -> str:
    """A short hash of what is at ``uri`` (keys and ETags), to reuse an unpacked copy."""
    bucket, prefix = parse_s3_uri(uri, field=field)
    digest = hashlib.sha256(uri.encode())
    for item in sorted(list_prefix(s3, bucket, prefix), key=lambda o: o["Key"]):
        digest.update(f"{item['Key']}\0{item['ETag']}\0".encode())
    return digest.hexdigest()[:16]


def extract_tar(archive: Path, destination: Path) -> None:
    """Unpack a (gzipped) tar safely: no absolute paths, no escaping links or devices."""
    destination.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(destination, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise S3DataError(f"the model archive is not a valid tar.gz: {exc}") from exc


def pack_tar_gz(source: Path) -> bytes:
    """The content of ``source`` (not the folder itself) as tar.gz bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        if source.is_dir():
            for path in sorted(source.rglob("*")):
                tar.add(path, arcname=str(path.relative_to(source)), recursive=False)
    return buffer.getvalue()


class FolderSync:
    """Uploads new or changed files of a folder to an S3 prefix (like SageMaker's sync)."""

    def __init__(self, s3: Any, folder: Path, uri: str, *, field: str) -> None:
        self._s3 = s3
        self._folder = folder
        self._bucket, self._prefix = parse_s3_uri(uri, field=field)
        self._uploaded: dict[str, tuple[int, int]] = {}

    def download_existing(self) -> int:
        """Fetch what is already under the prefix (a resumed job finds its checkpoints)."""
        count = download_prefix(
            self._s3, f"s3://{self._bucket}/{self._prefix}", self._folder, field="CheckpointConfig"
        )
        for path in self._folder.rglob("*"):
            if path.is_file():
                stat = path.stat()
                self._uploaded[str(path.relative_to(self._folder))] = (
                    stat.st_mtime_ns,
                    stat.st_size,
                )
        return count

    def sync(self) -> int:
        """Upload what changed since the last sync; the number of files uploaded."""
        uploaded = 0
        if not self._folder.is_dir():
            return 0
        for path in sorted(self._folder.rglob("*")):
            if not path.is_file() or path.name.startswith("."):
                continue  # hidden files are temporaries of atomic writes
            relative = path.relative_to(self._folder).as_posix()
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue  # replaced or removed while we walked
            signature = (stat.st_mtime_ns, stat.st_size)
            if self._uploaded.get(relative) == signature:
                continue
            key = f"{self._prefix.rstrip('/')}/{relative}" if self._prefix else relative
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            self._s3.put_object(Bucket=self._bucket, Key=key, Body=data)
            self._uploaded[relative] = signature
            uploaded += 1
        return uploaded

