"""The data bucket: models, the LoRA library, concept sets, generated images.

Prefixes (docs/architecture.md): `models/`, `loras/`, `concepts/<user>/<set>/`, `training/<job>/`,
`async/`, `outputs/<user>/`. Browsers upload concept images straight to S3 with pre-signed POSTs;
they see images through short-lived pre-signed GET URLs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from easel_contracts.concept_uploads import MAX_CONCEPT_FILE_BYTES
from easel_contracts.families import facts_for
from easel_contracts.model_manifest import (
    MANIFEST_MAX_BYTES,
    ManifestError,
    manifest_key,
    parse_manifest,
)
from easel_webui.errors import NotFound, PortalError
from easel_webui.uploads import STAGING, check_upload, content_type_for, final_key, staging_key

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTION_EXTENSION = ".txt"
MODEL_EXTENSIONS = (".tar.gz", ".tgz")
LORA_EXTENSIONS = (".safetensors",)
MAX_LORA_BYTES = 2 * 1024**3
SET_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
FILE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,119}$")
URL_SECONDS = 900


@dataclass(frozen=True)
class S3Object:
    key: str
    size: int
    modified: str


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"  # pragma: no cover


def check_set_name(value: str) -> str:
    value = (value or "").strip().lower()
    if not SET_NAME_RE.match(value):
        raise PortalError("set: use 1-40 lower-case letters, digits, '-' or '_'")
    return value


def check_file_name(value: str, *, field: str = "file name") -> str:
    value = (value or "").strip()
    if not FILE_NAME_RE.match(value) or ".." in value:
        raise PortalError(f"{field}: use letters, digits, '.', '_', '-' or spaces (no paths)")
    return value


class _Sequential:
    """A source read front to back only (a member of a streamed tar cannot seek)."""

    def __init__(self, source: Any) -> None:
        self._source = source

    def read(self, size: int = -1) -> bytes:
        return self._source.read(size)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


class Bucket:
    def __init__(self, client: Any, name: str) -> None:
        self.client = client
        self.name = name

    @property
    def uri(self) -> str:
        return f"s3://{self.name}"

    # --- generic

    def list(self, prefix: str, *, delimiter: str | None = None,
             limit: int = 5000) -> tuple[list[S3Object], list[str]]:
        objects: list[S3Object] = []
        prefixes: list[str] = []
        kwargs: dict[str, Any] = {"Bucket": self.name, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(**kwargs):
            for item in page.get("Contents", []):
                objects.append(S3Object(item["Key"], int(item["Size"]),
                                        item["LastModified"].strftime("%Y-%m-%d %H:%M")))
            prefixes.extend(p["Prefix"] for p in page.get("CommonPrefixes", []))
            if len(objects) >= limit:
                break
        return objects[:limit], prefixes

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.name, Key=key)
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def read(self, key: str, *, max_bytes: int = 16 * 1024 * 1024) -> bytes:
        try:
            answer = self.client.get_object(Bucket=self.name, Key=key)
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                raise NotFound(f"s3://{self.name}/{key} does not exist") from None
            raise
        body = answer["Body"].read(max_bytes + 1)
        if len(body) > max_bytes:
            raise PortalError(f"s3://{self.name}/{key} is larger than expected")
        return body

    def stream(self, key: str) -> Any:
        """The object's body as a stream (read it in chunks; never whole into memory)."""
        try:
            return self.client.get_object(Bucket=self.name, Key=key)["Body"]
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                raise NotFound(f"s3://{self.name}/{key} does not exist") from None
            raise

    def upload(self, key: str, source: Any, *, content_type: str) -> None:
        """Upload from a file-like object in parts (multipart above 8 MB): bounded memory."""
        self.client.upload_fileobj(_Sequential(source), self.name, key,
                                   ExtraArgs={"ContentType": content_type})

    def write(self, key: str, data: bytes, *, content_type: str) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=data, ContentType=content_type)

    def delete_prefix(self, prefix: str) -> int:
        objects, _ = self.list(prefix)
        for start in range(0, len(objects), 1000):
            chunk = objects[start:start + 1000]
            self.client.delete_objects(
                Bucket=self.name,
                Delete={"Objects": [{"Key": o.key} for o in chunk], "Quiet": True},
            )
        return len(objects)

    def copy(self, source_key: str, target_key: str) -> None:
        self.client.copy_object(
            Bucket=self.name, Key=target_key, CopySource={"Bucket": self.name, "Key": source_key}
        )

    def url(self, key: str, *, download_name: str | None = None) -> str:
        params: dict[str, Any] = {"Bucket": self.name, "Key": key}
        if download_name:
            params["ResponseContentDisposition"] = f'attachment; filename="{download_name}"'
        return self.client.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=URL_SECONDS
        )

    # --- models and LoRAs

    def models(self) -> list[dict[str, Any]]:
        """model.tar.gz files and uncompressed model prefixes under `models/`."""
        objects, _ = self.list("models/")
        found: dict[str, dict[str, Any]] = {}
        for obj in objects:
            if obj.key.endswith(MODEL_EXTENSIONS):
                found[obj.key] = {"uri": f"{self.uri}/{obj.key}", "name": obj.key[7:],
                                  "size": obj.size, "kind": "archive", "modified": obj.modified}
                continue
            marker = "/Stable-diffusion/"
            if marker in obj.key:
                root = obj.key.split(marker, 1)[0] + "/"
                entry = found.setdefault(root, {"uri": f"{self.uri}/{root}", "name": root[7:],
                                                "size": 0, "kind": "folder",
                                                "modified": obj.modified})
                entry["size"] += obj.size
        for root, entry in found.items():
            if entry["kind"] == "folder":
                # the whole folder's size, not only its checkpoints
                entry["size"] = sum(o.size for o in objects if o.key.startswith(root))
        keys = {obj.key for obj in objects}
        for key, entry in found.items():
            entry["manifest_key"] = manifest_key(key)
            entry["has_manifest"] = entry["manifest_key"] in keys
        models = sorted(found.values(), key=lambda m: m["name"])
        for model in models:
            model["size_text"] = human_size(model["size"])
        return models

    def attach_manifests(self, models: list[dict[str, Any]]) -> None:
        """Each model's families from the manifest beside it (``easel-model.json``), or a note
        that says why there are none."""
        for model in models:
            model["families"] = []
            if not model["has_manifest"]:
                model["manifest_note"] = (
                    "no manifest, so its family is unknown: upload it with scripts/upload_model, "
                    "which writes one")
                continue
            try:
                raw = self.read(model["manifest_key"], max_bytes=MANIFEST_MAX_BYTES)
                manifest = parse_manifest(raw, where=model["manifest_key"])
            except (PortalError, NotFound, ManifestError) as exc:
                model["manifest_note"] = getattr(exc, "message", None) or str(exc)
                continue
            model["families"] = [facts_for(family).label for family in manifest.families]
            model["manifest"] = manifest
            model["manifest_note"] = ""

    def loras(self) -> list[dict[str, Any]]:
        objects, _ = self.list("loras/")
        loras = []
        for obj in objects:
            if obj.key.endswith(LORA_EXTENSIONS):
                name = obj.key[len("loras/"):].rsplit(".", 1)[0]
                loras.append({"name": name, "key": obj.key, "size": obj.size,
                              "size_text": human_size(obj.size), "modified": obj.modified})
        return sorted(loras, key=lambda item: item["name"].lower())

    # --- concept sets

    def concept_sets(self, owner: str | None) -> list[dict[str, Any]]:
        """Sets under `concepts/<owner>/` (all owners when None) with image counts."""
        prefix = f"concepts/{owner}/" if owner else "concepts/"
        objects, _ = self.list(prefix)
        sets: dict[tuple[str, str], dict[str, Any]] = {}
        for obj in objects:
            parts = obj.key.split("/")
            if len(parts) < 4 or parts[2] == STAGING:
                continue  # unverified uploads are never listed
            key = (parts[1], parts[2])
            entry = sets.setdefault(key, {"owner": parts[1], "name": parts[2], "images": [],
                                          "captions": 0, "size": 0, "files": []})
            entry["size"] += obj.size
            entry["files"].append("/".join(parts[3:]))
            if obj.key.lower().endswith(IMAGE_EXTENSIONS):
                entry["images"].append(obj.key)
            elif obj.key.endswith(CAPTION_EXTENSION):
                entry["captions"] += 1
        result = sorted(sets.values(), key=lambda s: (s["owner"], s["name"]))
        for entry in result:
            entry["uri"] = f"{self.uri}/concepts/{entry['owner']}/{entry['name']}/"
            entry["size_text"] = human_size(entry["size"])
        return result

    def presigned_concept_upload(self, *, owner: str, set_name: str,
                                 file_name: str) -> dict[str, Any]:
        """A pre-signed POST into the staging prefix; `verify_concept_upload` moves it in.

        The policy fixes the key, the content type (from the extension, whatever the browser
        says) and the size range, so S3 refuses anything else.
        """
        set_name = check_set_name(set_name)
        file_name = check_file_name(file_name)
        content_type = content_type_for(file_name)
        key = staging_key(owner, set_name, file_name)
        post = self.client.generate_presigned_post(
            Bucket=self.name,
            Key=key,
            Fields={"Content-Type": content_type},
            Conditions=[
                {"Content-Type": content_type},
                ["content-length-range", 1, MAX_CONCEPT_FILE_BYTES],
            ],
            ExpiresIn=URL_SECONDS,
        )
        return {"name": file_name, "key": key, "url": post["url"], "fields": post["fields"]}

    def verify_concept_upload(self, *, owner: str, set_name: str, file_name: str) -> str:
        """Check a staged upload and move it into its set; the final key, or `PortalError`.

        The staged object is deleted either way, so a rejected file leaves nothing behind.
        """
        set_name = check_set_name(set_name)
        file_name = check_file_name(file_name)
        staged = staging_key(owner, set_name, file_name)
        try:
            data = self.read(staged, max_bytes=MAX_CONCEPT_FILE_BYTES)
        except NotFound:
            raise PortalError(f"{file_name}: nothing was uploaded under this name") from None
        except PortalError:
            self.client.delete_object(Bucket=self.name, Key=staged)
            raise PortalError(
                f"{file_name}: larger than {MAX_CONCEPT_FILE_BYTES // 1024**2} MB") from None
        try:
            content_type = check_upload(file_name, data)
            key = final_key(owner, set_name, file_name)
            self.write(key, data, content_type=content_type)
        finally:
            self.client.delete_object(Bucket=self.name, Key=staged)
        return key
