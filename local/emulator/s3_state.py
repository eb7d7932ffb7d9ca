"""Bucket content on disk: one file per object plus an index of keys, ETags and metadata.

Layout: ``<root>/<bucket>/index.json`` and ``<root>/<bucket>/objects/<key>``. A key that
cannot be a plain relative path (``..``, a trailing ``/``, or a file/folder clash) is stored
under ``objects/_keys/<sha256 of key>``; the index always says which file holds which key.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from local.statefiles import read_json, write_chunks_atomic, write_json_atomic

INDEX_NAME = "index.json"
# Objects at least this big are linked to/from the emulator's own files, never copied.
LINK_THRESHOLD = 1024 * 1024
OBJECTS_DIR = "objects"
HASHED_DIR = "_keys"


def _natural_relpath(key: str) -> str | None:
    """The key as a relative file path, or None when it cannot be one safely."""
    if not key or key.startswith("/") or key.endswith("/") or "\\" in key or "\x00" in key:
        return None
    parts = PurePosixPath(key).parts
    if any(part in ("", ".", "..") for part in parts) or parts[0] == HASHED_DIR:
        return None
    if "/".join(parts) != key:  # e.g. "a//b" collapses: not a faithful path
        return None
    return key


def _file_for_key(key: str, taken: set[str]) -> str:
    """The file (relative to objects/) that will hold ``key``, given the files in use."""
    natural = _natural_relpath(key)
    if natural is not None and natural not in taken:
        parts = natural.split("/")
        parent_clash = any("/".join(parts[:i]) in taken for i in range(1, len(parts)))
        child_clash = any(other.startswith(natural + "/") for other in taken)
        if not parent_clash and not child_clash:
            return natural
    return f"{HASHED_DIR}/{hashlib.sha256(key.encode()).hexdigest()}"


def _prune_empty_dirs(objects_dir: Path, start: Path) -> None:
    current = start
    while current != objects_dir and objects_dir in current.parents:
        try:
            current.rmdir()
        except OSError:
            return
        current = current.parent


class EmulatorFiles:
    """The emulator's internal routes for large objects kept as files (see ``fastpath``)."""

    def __init__(self, url: str) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self._host, self._port = host, int(port)

    def _call(self, method: str, path: str, body: bytes | None = None) -> dict[str, Any] | None:
        connection = http.client.HTTPConnection(self._host, self._port, timeout=60)
        try:
            connection.request(method, path, body=body,
                               headers={"Content-Type": "application/json"} if body else {})
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        return json.loads(data) if response.status == 200 else None

    def locate(self, bucket: str, key: str) -> dict[str, Any] | None:
        """Where the emulator keeps ``key``'s body (path, etag, size, ...), or None."""
        from urllib.parse import urlencode

        return self._call("GET", "/_easel/s3-file?" + urlencode({"bucket": bucket, "key": key}))

    def adopt(self, bucket: str, key: str, path: Path, entry: dict[str, Any]) -> str | None:
        """Register the file at ``path`` as ``key`` (no bytes copied); the ETag, or None."""
        answer = self._call("POST", "/_easel/s3-adopt", json.dumps({
            "bucket": bucket, "key": key, "path": str(path.resolve()), "etag": entry["etag"],
            "content_type": entry.get("content_type"), "metadata": entry.get("metadata") or {},
        }).encode())
        return answer["etag"] if answer else None


def _link_atomic(source: str, target: Path) -> None:
    """``target`` becomes a hard link to ``source`` (a copy across file systems)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mktemp(prefix=f".{target.name}.", dir=target.parent))  # noqa: S306
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def snapshot_bucket(
    s3: Any, bucket: str, bucket_dir: Path, files: EmulatorFiles | None = None
) -> None:
    """Bring ``bucket_dir`` in line with the bucket: fetch new/changed objects, drop deleted.

    An object whose ETag and size are unchanged is never read again; a large object the
    emulator keeps as a file is hard-linked into ``bucket_dir``, not copied.
    """
    objects_dir = bucket_dir / OBJECTS_DIR
    index: dict[str, dict[str, Any]] = read_json(bucket_dir / INDEX_NAME, {})
    listed: dict[str, str] = {}
    sizes: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            listed[item["Key"]] = item["ETag"]
            sizes[item["Key"]] = item.get("Size", -1)

    for key in [k for k in index if k not in listed]:
        path = objects_dir / index.pop(key)["file"]
        path.unlink(missing_ok=True)
        _prune_empty_dirs(objects_dir, path.parent)

    taken = {entry["file"] for entry in index.values()}
    for key, etag in listed.items():
        entry = index.get(key)
        if entry and entry["etag"] == etag and entry.get("size", sizes[key]) == sizes[key] \
                and (objects_dir / entry["file"]).is_file():
            continue
        relpath = entry["file"] if entry else _file_for_key(key, taken)
        located = files.locate(bucket, key) if files and sizes[key] >= LINK_THRESHOLD else None
        if located is not None:
            _link_atomic(located["path"], objects_dir / relpath)
            taken.add(relpath)
            index[key] = {
                "file": relpath,
                "etag": located["etag"],
                "size": located["size"],
                "content_type": located.get("content_type"),
                "metadata": located.get("metadata") or {},
            }
            continue
        try:
            response = s3.get_object(Bucket=bucket, Key=key)
        except s3.exceptions.NoSuchKey:
            continue  # deleted while we were listing; the next snapshot drops it
        write_chunks_atomic(objects_dir / relpath, response["Body"].iter_chunks(1024 * 1024))
        taken.add(relpath)
        index[key] = {
            "file": relpath,
            "etag": response.get("ETag", etag),
            "size": response.get("ContentLength", sizes[key]),
            "content_type": response.get("ContentType"),
            "metadata": response.get("Metadata", {}),
        }
    write_json_atomic(bucket_dir / INDEX_NAME, index)


def seed_bucket(
    s3: Any, bucket: str, bucket_dir: Path, files: EmulatorFiles | None = None
) -> None:
    """Load every object recorded in ``bucket_dir`` into the (existing) bucket.

    Large objects are handed to the emulator as files (hard links, same ETag); small ones
    are uploaded.
    """
    objects_dir = bucket_dir / OBJECTS_DIR
    index: dict[str, dict[str, Any]] = read_json(bucket_dir / INDEX_NAME, {})
    for key, entry in list(index.items()):
        path = objects_dir / entry["file"]
        if not path.is_file():
            index.pop(key)
            continue
        if files is not None and entry.get("etag") and path.stat().st_size >= LINK_THRESHOLD:
            etag = files.adopt(bucket, key, path, entry)
            if etag is not None:
                entry["etag"] = etag
                continue
        extra: dict[str, Any] = {"Metadata": entry.get("metadata") or {}}
        if entry.get("content_type"):
            extra["ContentType"] = entry["content_type"]
        with path.open("rb") as body:
            response = s3.put_object(Bucket=bucket, Key=key, Body=body, **extra)
        entry["etag"] = response["ETag"]
    write_json_atomic(bucket_dir / INDEX_NAME, index)


def stored_buckets(root: Path) -> list[str]:
    """Names of the buckets kept under ``root``."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / INDEX_NAME).is_file())


def remove_bucket_dir(root: Path, bucket: str) -> None:
    shutil.rmtree(root / bucket, ignore_errors=True)
