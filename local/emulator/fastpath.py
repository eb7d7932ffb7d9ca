"""Large S3 object bodies as plain files, streamed at disk speed, in front of moto.

Runs inside the emulator subprocess (``server_main``), in the same process as moto's S3
backend. Moto stays the owner of every object's metadata (listing, HEAD, delete, errors); this
layer only moves bytes:

* ``UploadPart`` bodies are streamed to a file (MD5 computed on the way) and registered as the
  part in moto's multipart upload, so ``ListParts``/``AbortMultipartUpload`` work unchanged.
* ``CompleteMultipartUpload`` joins the part files into one object file and registers it as
  the key, with S3's multipart ETag (MD5 of the part MD5s, ``-N``). Anything irregular
  (unknown part, wrong ETag, a small middle part) is left to moto, which answers S3's error.
* ``GetObject`` of a large object (with or without ``Range``) streams from the file.

Two internal routes let the parent process keep its on-disk state without copying bytes:
``GET /_easel/s3-file?bucket=&key=`` names the file holding a key (the snapshot hard-links it),
and ``POST /_easel/s3-adopt`` registers a file from the state as a key (the seed at start).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import threading
import uuid
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable, Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

FILE_ROUTE = "/_easel/s3-file"
ADOPT_ROUTE = "/_easel/s3-adopt"
# Objects at least this big are served from their file by GetObject.
STREAM_THRESHOLD = 1024 * 1024
CHUNK = 1024 * 1024
MIN_PART_SIZE = 5 * 1024 * 1024  # https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
# Headers S3 stores with an object and answers on GetObject.
_STORED_HEADERS = ("Cache-Control", "Content-Disposition", "Content-Encoding",
                   "Content-Language", "Expires")

Pass = object()  # a handler's "not mine: let moto answer"


def _backend_of(bucket: str) -> Any | None:
    """Moto's S3 backend (of whichever account) that holds ``bucket``."""
    from moto.s3.models import s3_backends

    for account_id in list(s3_backends.keys()):
        backend = s3_backends[account_id]["aws"]
        if bucket in backend.buckets:
            return backend
    return None


def _bucket(name: str) -> Any | None:
    backend = _backend_of(name)
    return backend.buckets[name] if backend is not None else None


def _make_file_key_class() -> type:
    from moto.s3.models import FakeKey

    class FileKey(FakeKey):
        """A moto key whose body is a file that this layer owns (removed with the key)."""

        easel_path: str = ""

        def dispose(self, garbage: bool = False) -> None:
            super().dispose(garbage=garbage)
            if self.easel_path:
                with contextlib.suppress(OSError):
                    os.unlink(self.easel_path)
                self.easel_path = ""

    return FileKey


_file_key_class: type | None = None


def _attach_file(key: Any, path: Path, size: int) -> Any:
    """Point moto ``key``'s body at ``path`` (which the key now owns)."""
    global _file_key_class  # noqa: PLW0603 - built once, after moto is imported
    if _file_key_class is None:
        _file_key_class = _make_file_key_class()
    key._value_buffer.close()
    key.__class__ = _file_key_class
    key._value_buffer = path.open("rb")
    key.contentsize = size
    key.easel_path = str(path)
    return key


def key_file(key: Any) -> str | None:
    """The file holding ``key``'s body, when this layer stores it."""
    return getattr(key, "easel_path", None) or None


class FastPath:
    """WSGI middleware: large S3 bodies on disk under ``blob_dir``; everything else to moto."""

    def __init__(self, app: Callable, blob_dir: Path) -> None:
        self._app = app
        self.blob_dir = blob_dir
        self._parts_dir = blob_dir / "parts"
        self._objects_dir = blob_dir / "objects"
        for folder in (self._parts_dir, self._objects_dir):
            shutil.rmtree(folder, ignore_errors=True)  # a fresh moto knows none of them
            folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.served = {"get": 0, "upload_part": 0, "complete": 0, "adopt": 0}

    def _new_object_path(self) -> Path:
        return self._objects_dir / uuid.uuid4().hex

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Any:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET").upper()
        if path == FILE_ROUTE and method == "GET":
            return self._file_route(environ, start_response)
        if path == ADOPT_ROUTE and method == "POST":
            return self._adopt_route(environ, start_response)
        answer = Pass
        if _is_s3(environ):
            query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
            target = _bucket_and_key(path)
            if target is not None:
                answer = self._route(method, target, query, environ, start_response)
        if answer is Pass:
            return self._app(environ, start_response)
        return answer

    def _route(self, method: str, target: tuple[str, str], query: dict[str, list[str]],
               environ: dict[str, Any], start_response: Callable) -> Any:
        bucket, key = target
        if method == "GET" and not query and key:
            return self._get(bucket, key, environ, start_response)
        if method == "PUT" and set(query) == {"partNumber", "uploadId"}:
            return self._upload_part(bucket, query, environ, start_response)
        if method == "POST" and set(query) == {"uploadId"}:
            return self._complete(bucket, key, query["uploadId"][0], environ, start_response)
        return Pass

    # --- GetObject

    def _get(self, bucket: str, name: str, environ: dict[str, Any],
             start_response: Callable) -> Any:
        if any(h in environ for h in ("HTTP_IF_MATCH", "HTTP_IF_NONE_MATCH",
                                      "HTTP_IF_MODIFIED_SINCE", "HTTP_IF_UNMODIFIED_SINCE")):
            return Pass
        if _bucket(bucket) is None:
            return Pass
        key = _backend_of(bucket).get_object(bucket, name)
        if key is None or key.size < STREAM_THRESHOLD:
            return Pass
        size = key.size
        start, end, status = 0, size - 1, "200 OK"
        requested = environ.get("HTTP_RANGE", "")
        if requested:
            match = _RANGE.match(requested.strip())
            if not match or not (match.group(1) or match.group(2)):
                return Pass
            first, last = match.group(1), match.group(2)
            if first:
                start, end = int(first), min(int(last), size - 1) if last else size - 1
            else:
                start, end = max(size - int(last), 0), size - 1
            if start >= size or start > end:
                return Pass  # moto answers InvalidRange
            status = "206 Partial Content"
        headers = [
            ("Content-Type", key.metadata.get("Content-Type") or "binary/octet-stream"),
            ("Content-Length", str(end - start + 1)),
            ("ETag", key.etag),
            ("Last-Modified", formatdate(key.last_modified.timestamp(), usegmt=True)),
            ("Accept-Ranges", "bytes"),
        ]
        headers += [(name, key.metadata[name]) for name in _STORED_HEADERS
                    if key.metadata.get(name)]
        headers += [(f"x-amz-meta-{k}", v) for k, v in _user_metadata(key).items()]
        if status.startswith("206"):
            headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
        body = self._body(key, start, end + 1)
        self.served["get"] += 1
        start_response(status, headers)
        return body

    def _body(self, key: Any, start: int, stop: int) -> Iterator[bytes]:
        path = key_file(key)
        if path:
            handle = open(path, "rb")  # noqa: SIM115 - closed when the iterator ends
            return _file_chunks(handle, start, stop)
        return _buffer_chunks(key, start, stop)

    # --- multipart upload

    def _upload_part(self, bucket: str, query: dict[str, list[str]], environ: dict[str, Any],
                     start_response: Callable) -> Any:
        if _chunked(environ) or "HTTP_X_AMZ_COPY_SOURCE" in environ:
            return Pass
        checksums = {k for k in environ if k.startswith("HTTP_X_AMZ_CHECKSUM_")}
        if checksums - {"HTTP_X_AMZ_CHECKSUM_CRC32"}:
            return Pass  # other algorithms: moto checks them
        bucket_obj = _bucket(bucket)
        upload_id = query["uploadId"][0]
        if bucket_obj is None or upload_id not in bucket_obj.multiparts:
            return Pass
        try:
            part_number = int(query["partNumber"][0])
        except ValueError:
            return Pass
        if not 1 <= part_number <= 10000:
            return Pass
        length = int(environ.get("CONTENT_LENGTH") or 0)
        folder = self._parts_dir / upload_id
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{part_number}.{uuid.uuid4().hex}"
        given_crc = environ.get("HTTP_X_AMZ_CHECKSUM_CRC32")
        # The CRC32 only when the part carries one or the upload keeps a composite checksum:
        # it is a second pass over every byte (the MD5, the part's ETag, is always needed).
        with_crc = given_crc is not None or bool(
            bucket_obj.multiparts[upload_id].metadata.get("x-amz-checksum-algorithm"))
        received = _receive(environ["wsgi.input"], path, length, with_crc=with_crc)
        if received is None:
            return _error(start_response, "400 Bad Request", "IncompleteBody",
                          "The request body ended before Content-Length bytes arrived.")
        digest, crc = received
        if not _md5_matches(environ, digest):
            path.unlink(missing_ok=True)
            return _error(start_response, "400 Bad Request", "BadDigest",
                          "The Content-MD5 you specified did not match what we received.")
        crc_b64 = _b64_crc32(crc) if crc is not None else None
        if given_crc is not None and given_crc != crc_b64:
            path.unlink(missing_ok=True)
            return _error(start_response, "400 Bad Request", "BadDigest",
                          "The CRC32 you specified did not match the calculated checksum.")
        multipart = bucket_obj.multiparts.get(upload_id)
        if multipart is None:  # aborted meanwhile
            path.unlink(missing_ok=True)
            return Pass
        part = multipart.set_part(part_number, b"")
        part._etag = digest.hexdigest()
        part.easel_crc32 = crc
        _attach_file(part, path, length)
        self.served["upload_part"] += 1
        headers = [("ETag", part.etag), ("Content-Length", "0")]
        if given_crc is not None:
            headers.append(("x-amz-checksum-crc32", crc_b64))
        start_response("200 OK", headers)
        return [b""]

    def _complete(self, bucket: str, name: str, upload_id: str, environ: dict[str, Any],
                  start_response: Callable) -> Any:
        bucket_obj = _bucket(bucket)
        if bucket_obj is None or upload_id not in bucket_obj.multiparts:
            return Pass
        multipart = bucket_obj.multiparts[upload_id]
        algorithm = multipart.metadata.get("x-amz-checksum-algorithm")
        checksum_type = multipart.metadata.get("x-amz-checksum-type") or "COMPOSITE"
        if multipart.key_name != name or (
            algorithm and (algorithm.upper() != "CRC32" or checksum_type != "COMPOSITE")
        ):
            return Pass  # full-object or other checksums: moto computes them
        body = _read_body(environ)
        environ["wsgi.input"] = _Replay(body)  # moto reads it again if we pass
        environ["CONTENT_LENGTH"] = str(len(body))
        wanted = _completed_parts(body)
        if not wanted:
            return Pass
        parts = []
        for index, (number, etag) in enumerate(wanted):
            part = multipart.parts.get(number)
            if part is None or part.etag.strip('"') != etag.strip('"'):
                return Pass
            if index < len(wanted) - 1 and part.size < MIN_PART_SIZE:
                return Pass
            if algorithm and getattr(part, "easel_crc32", None) is None:
                return Pass
            parts.append(part)
        target = self._new_object_path()
        md5s = hashlib.md5(usedforsecurity=False)
        with target.open("wb") as out:
            for part in parts:
                md5s.update(bytes.fromhex(part.etag.strip('"')))
                _append_part(part, out)
        etag = f"{md5s.hexdigest()}-{len(parts)}"
        size = target.stat().st_size
        backend = _backend_of(bucket)
        del bucket_obj.multiparts[upload_id]  # disposes the parts (their files go)
        key = backend.put_object(bucket, name, b"", storage=multipart.storage, etag=etag,
                                 multipart=multipart, encryption=multipart.sse_encryption,
                                 kms_key_id=multipart.kms_key_id)
        _attach_file(key, target, size)
        key.set_metadata(multipart.metadata)
        if algorithm:
            # A composite checksum: the CRC32 of the parts' CRC32s, "-N" (as S3 reports it).
            # https://docs.aws.amazon.com/AmazonS3/latest/userguide/checking-object-integrity.html
            joined = b"".join(p.easel_crc32.to_bytes(4, "big") for p in parts)
            key.checksum_algorithm = algorithm
            key.checksum_type = "COMPOSITE"
            key.checksum_value = _b64_crc32(zlib.crc32(joined))
            key.checksum_parts = len(parts)
        self.served["complete"] += 1
        answer = (
            f'<?xml version="1.0" encoding="UTF-8"?>'
            f'<CompleteMultipartUploadResult xmlns="{_S3_NS}">'
            f"<Location>/{_xml(bucket)}/{_xml(name)}</Location><Bucket>{_xml(bucket)}</Bucket>"
            f"<Key>{_xml(name)}</Key><ETag>&quot;{etag}&quot;</ETag>"
            "</CompleteMultipartUploadResult>"
        ).encode()
        start_response("200 OK", [("Content-Type", "application/xml"),
                                  ("Content-Length", str(len(answer)))])
        return [answer]

    # --- internal routes for the parent's on-disk state

    def _file_route(self, environ: dict[str, Any], start_response: Callable) -> Any:
        query = parse_qs(environ.get("QUERY_STRING", ""))
        bucket = (query.get("bucket") or [""])[0]
        name = (query.get("key") or [""])[0]
        key = _backend_of(bucket).get_object(bucket, name) if _bucket(bucket) is not None else None
        path = key_file(key) if key is not None else None
        if not path:
            return _json(start_response, "404 Not Found", {"error": "not a file-backed key"})
        return _json(start_response, "200 OK", {
            "path": path, "etag": key.etag, "size": key.size,
            "content_type": key.metadata.get("Content-Type"), "metadata": _user_metadata(key),
        })

    def _adopt_route(self, environ: dict[str, Any], start_response: Callable) -> Any:
        request = json.loads(_read_body(environ) or b"{}")
        source = Path(request["path"])
        if _bucket(request["bucket"]) is None or not source.is_file():
            return _json(start_response, "404 Not Found", {"error": "no such bucket or file"})
        target = self._new_object_path()
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
        key = _backend_of(request["bucket"]).put_object(request["bucket"], request["key"], b"",
                                    etag=request["etag"].strip('"'))
        _attach_file(key, target, target.stat().st_size)
        meta = {f"x-amz-meta-{k}": v for k, v in (request.get("metadata") or {}).items()}
        if request.get("content_type"):
            meta["Content-Type"] = request["content_type"]
        key.set_metadata(meta)
        self.served["adopt"] += 1
        return _json(start_response, "200 OK", {"etag": key.etag})


class _Replay:
    def __init__(self, data: bytes) -> None:
        import io

        self._stream = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(size)

    def readline(self, size: int = -1) -> bytes:
        return self._stream.readline(size)


def _is_s3(environ: dict[str, Any]) -> bool:
    from local.emulator.server_main import signed_service

    return signed_service(environ) == "s3"


def _bucket_and_key(path: str) -> tuple[str, str] | None:
    """Path-style ``/bucket/key`` (the local clients use path addressing)."""
    if not path.startswith("/") or path.startswith("/_easel/"):
        return None
    bucket, _, key = path[1:].partition("/")
    if not bucket:
        return None
    return bucket, key


def _chunked(environ: dict[str, Any]) -> bool:
    return "aws-chunked" in environ.get("HTTP_CONTENT_ENCODING", "") or environ.get(
        "HTTP_X_AMZ_CONTENT_SHA256", ""
    ).startswith("STREAMING-")


def _b64_crc32(value: int) -> str:
    return base64.b64encode(value.to_bytes(4, "big")).decode()


def _receive(stream: Any, path: Path, length: int, *,
             with_crc: bool = True) -> tuple[Any, int | None] | None:
    """Stream ``length`` bytes to ``path``: (MD5, CRC32 or None without ``with_crc``), or None
    if the body ended early. One buffer is reused for every chunk (a fresh 1 MiB object per
    read costs page faults on every byte)."""
    digest = hashlib.md5(usedforsecurity=False)
    crc: int | None = 0 if with_crc else None
    buffer = bytearray(min(CHUNK, max(length, 1)))
    view = memoryview(buffer)
    readinto = getattr(stream, "readinto", None)
    remaining = length
    with path.open("wb") as out:
        while remaining > 0:
            if readinto is not None:
                count = readinto(view[: min(CHUNK, remaining)])
                chunk = view[:count] if count else b""
            else:
                chunk = stream.read(min(CHUNK, remaining))
            if not chunk:
                break
            digest.update(chunk)
            if crc is not None:
                crc = zlib.crc32(chunk, crc)
            out.write(chunk)
            remaining -= len(chunk)
    if remaining:
        path.unlink(missing_ok=True)
        return None
    return digest, crc


def _md5_matches(environ: dict[str, Any], digest: Any) -> bool:
    given = environ.get("HTTP_CONTENT_MD5")
    return not given or base64.b64decode(given) == digest.digest()


def _append_part(part: Any, out: Any) -> None:
    path = key_file(part)
    if path:
        # in the kernel (no pass through this process's memory), where the file system can
        out.flush()
        with open(path, "rb") as source:
            offset, size = 0, part.size
            with contextlib.suppress(OSError):
                while offset < size:
                    copied = os.copy_file_range(source.fileno(), out.fileno(), size - offset)
                    if not copied:
                        break
                    offset += copied
            if offset < size:  # no copy_file_range here: through this process, in big blocks
                source.seek(offset)
                shutil.copyfileobj(source, out, 16 * CHUNK)
        return
    for chunk in _buffer_chunks(part, 0, part.size):
        out.write(chunk)


def _file_chunks(handle: Any, start: int, stop: int) -> Iterator[bytes]:
    try:
        position = start
        while position < stop:
            chunk = os.pread(handle.fileno(), min(CHUNK, stop - position), position)
            if not chunk:
                break
            position += len(chunk)
            yield chunk
    finally:
        handle.close()


def _buffer_chunks(key: Any, start: int, stop: int) -> Iterator[bytes]:
    position = start
    while position < stop:
        with key.lock:
            key._value_buffer.seek(position)
            chunk = key._value_buffer.read(min(CHUNK, stop - position))
        if not chunk:
            break
        position += len(chunk)
        yield chunk


def _user_metadata(key: Any) -> dict[str, str]:
    prefix = "x-amz-meta-"
    return {k[len(prefix):]: v for k, v in key.metadata.items() if k.lower().startswith(prefix)}


def _read_body(environ: dict[str, Any]) -> bytes:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    return environ["wsgi.input"].read(length) if length else b""


def _completed_parts(body: bytes) -> list[tuple[int, str]]:
    try:
        root = ET.fromstring(body)  # noqa: S314 - our own clients' small request body
    except ET.ParseError:
        return []
    parts = []
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] != "Part":
            continue
        fields = {child.tag.rsplit("}", 1)[-1]: (child.text or "") for child in element}
        try:
            parts.append((int(fields["PartNumber"]), unquote(fields["ETag"])))
        except (KeyError, ValueError):
            return []
    numbers = [n for n, _ in parts]
    return parts if numbers == sorted(set(numbers)) else []


def _xml(text: str) -> str:
    from xml.sax.saxutils import escape

    return escape(text)


def _json(start_response: Callable, status: str, data: dict[str, Any]) -> list[bytes]:
    body = json.dumps(data).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
    return [body]


def _error(start_response: Callable, status: str, code: str, message: str) -> list[bytes]:
    body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>{_xml(message)}</Message></Error>").encode()
    start_response(status, [("Content-Type", "application/xml"),
                            ("Content-Length", str(len(body)))])
    return [body]
