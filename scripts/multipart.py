"""Resumable, parallel S3 multipart uploads.

The state of an upload (bucket, key, UploadId, a fingerprint of the source, parts sent) lives in a
small JSON file under the state folder (default `~/.cache/easel/uploads`). After an interruption,
running the same command again finds the UploadId, asks S3 which parts it already has
(`ListParts`), and sends only the others: a part is skipped when S3 holds a part with that number
whose MD5 (the part's ETag) matches the bytes that would be sent. The data is produced in order
(e.g. a tar.gz stream) and at most `jobs + 1` parts are held in memory at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for every part but the last
MAX_PARTS = 10_000
STATE_VERSION = 1


def default_state_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "easel" / "uploads"


class UploadInterrupted(RuntimeError):
    """Some parts did not reach S3; the state file is kept so a rerun resumes."""

    def __init__(self, message: str, *, sent: int, skipped: int) -> None:
        super().__init__(message)
        self.sent = sent
        self.skipped = skipped


class StateFile:
    """One JSON file per destination (bucket + key or prefix)."""

    def __init__(self, state_dir: Path, *, bucket: str, target: str) -> None:
        digest = hashlib.sha256(f"s3://{bucket}/{target}".encode()).hexdigest()[:24]
        self.path = state_dir / f"{digest}.json"
        self.bucket = bucket
        self.target = target

    def load(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            return None
        if data.get("bucket") != self.bucket or data.get("target") != self.target:
            return None
        return data

    def save(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {**data, "version": STATE_VERSION, "bucket": self.bucket, "target": self.target}
        partial = self.path.with_suffix(".json.partial")
        partial.write_text(json.dumps(payload, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(partial, self.path)

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)


def list_uploaded_parts(s3: Any, *, bucket: str, key: str,
                        upload_id: str) -> dict[int, tuple[str, int]] | None:
    """Part number -> (ETag, size) that S3 holds; None when the upload no longer exists."""
    parts: dict[int, tuple[str, int]] = {}
    marker = 0
    while True:
        try:
            answer = s3.list_parts(Bucket=bucket, Key=key, UploadId=upload_id,
                                   PartNumberMarker=marker)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchUpload", "404"):
                return None
            raise
        for part in answer.get("Parts", []):
            parts[int(part["PartNumber"])] = (str(part["ETag"]).strip('"'), int(part["Size"]))
        if not answer.get("IsTruncated"):
            return parts
        marker = int(answer["NextPartNumberMarker"])


@dataclass
class PartCounts:
    sent: int = 0
    skipped: int = 0

    @property
    def total(self) -> int:
        return self.sent + self.skipped


class MultipartUpload:
    """Feed parts in order with `add(data)`; `complete()` waits for all and finishes the object.

    `existing` are the parts S3 already holds (from a previous run): a part whose number, size and
    MD5 match is not sent again.
    """

    def __init__(
        self,
        s3: Any,
        *,
        bucket: str,
        key: str,
        upload_id: str,
        jobs: int = 4,
        existing: dict[int, tuple[str, int]] | None = None,
        on_part: Callable[[int, int, bool], None] = lambda _n, _size, _sent: None,
    ) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.key = key
        self.upload_id = upload_id
        self.existing = existing or {}
        self.on_part = on_part
        self.counts = PartCounts()
        self._etags: dict[int, str] = {}
        self._next = 1
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max(1, jobs) + 1)
        self._pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="easel-part")
        self._futures: list[Future[None]] = []
        self._error: BaseException | None = None

    def add(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        number = self._next
        self._next += 1
        if number > MAX_PARTS:
            raise ValueError(f"more than {MAX_PARTS} parts: use a larger --part-size")
        held = self.existing.get(number)
        # Only a part already in S3 needs the local MD5 (to skip it): S3 computes the ETag.
        if held is not None and held[1] == len(data) \
                and held[0] == hashlib.md5(data, usedforsecurity=False).hexdigest():
            with self._lock:
                self._etags[number] = held[0]
                self.counts.skipped += 1
            self.on_part(number, len(data), False)
            return
        self._slots.acquire()
        if self._error is not None:
            self._slots.release()
            raise self._error
        self._futures.append(self._pool.submit(self._send, number, data))

    def _send(self, number: int, data: bytes) -> None:
        try:
            if self._error is not None:
                return
            answer = self.s3.upload_part(Bucket=self.bucket, Key=self.key,
                                         UploadId=self.upload_id, PartNumber=number, Body=data)
            etag = str(answer["ETag"]).strip('"')
            with self._lock:
                self._etags[number] = etag
                self.counts.sent += 1
            self.on_part(number, len(data), True)
        except BaseException as exc:  # recorded, re-raised by add()/complete() in the caller
            with self._lock:
                if self._error is None:
                    self._error = exc
        finally:
            self._slots.release()

    def wait(self) -> None:
        self._pool.shutdown(wait=True)
        if self._error is not None:
            raise self._error

    def abandon(self) -> None:
        """Stop sending (the parts already in S3 stay there for the next run)."""
        if self._error is None:
            self._error = RuntimeError("stopped")
        self._pool.shutdown(wait=True, cancel_futures=True)

    def complete(self) -> None:
        self.wait()
        parts = [{"PartNumber": n, "ETag": f'"{e}"'} for n, e in sorted(self._etags.items())]
        self.s3.complete_multipart_upload(Bucket=self.bucket, Key=self.key,
                                          UploadId=self.upload_id,
                                          MultipartUpload={"Parts": parts})


class PartWriter:
    """A write-only file object that cuts what is written into parts of `part_size` bytes."""

    def __init__(self, upload: MultipartUpload, part_size: int) -> None:
        self.upload = upload
        self.part_size = part_size
        self._buffer = bytearray()
        self._parts = 0

    def write(self, data: bytes) -> int:
        self._buffer += data
        while len(self._buffer) >= self.part_size:
            chunk = bytes(self._buffer[: self.part_size])
            del self._buffer[: self.part_size]
            self._parts += 1
            self.upload.add(chunk)
        return len(data)

    def flush(self) -> None:
        """Nothing to do: parts leave only when full (or at `finish`)."""

    def finish(self) -> None:
        if self._buffer or self._parts == 0:
            self.upload.add(bytes(self._buffer))
            self._buffer.clear()


def open_upload(
    s3: Any,
    state: StateFile,
    *,
    key: str,
    fingerprint: str,
    say: Callable[[str], None],
    extra_args: dict[str, Any] | None = None,
) -> tuple[str, dict[int, tuple[str, int]]]:
    """Resume the upload recorded for `key` (same fingerprint) or start a new one.

    Returns (UploadId, parts S3 already holds). The state file is written before any part is sent.
    """
    data = state.load() or {}
    uploads: dict[str, Any] = dict(data.get("uploads", {}))
    if data.get("fingerprint") not in (None, fingerprint):
        say("the source changed since the interrupted upload: starting over")
        for old_key, upload_id in uploads.items():
            with contextlib.suppress(ClientError):
                state_abort(s3, bucket=state.bucket, key=old_key, upload_id=upload_id)
        uploads = {}
        data = {}
    upload_id = uploads.get(key)
    if upload_id:
        parts = list_uploaded_parts(s3, bucket=state.bucket, key=key, upload_id=upload_id)
        if parts is not None:
            say(f"resuming: S3 already holds {len(parts)} part(s) of {key}")
            return upload_id, parts
        say("the interrupted upload expired on S3: starting over")
    answer = s3.create_multipart_upload(Bucket=state.bucket, Key=key, **(extra_args or {}))
    upload_id = answer["UploadId"]
    uploads[key] = upload_id
    state.save({**data, "fingerprint": fingerprint, "uploads": uploads})
    return upload_id, {}


def state_abort(s3: Any, *, bucket: str, key: str, upload_id: str) -> None:
    s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)


def mark_done(state: StateFile, key: str, *, fingerprint: str) -> None:
    data = state.load() or {"fingerprint": fingerprint}
    uploads = dict(data.get("uploads", {}))
    uploads.pop(key, None)
    done = sorted({*data.get("done", []), key})
    state.save({**data, "fingerprint": fingerprint, "uploads": uploads, "done": done})
