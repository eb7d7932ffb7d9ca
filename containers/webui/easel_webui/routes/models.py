"""Models page: models and LoRAs in the bucket, LoRA upload, concept sets (direct upload)."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from easel_contracts.concept_uploads import (
    MAX_CONCEPT_FILE_BYTES,
    MIN_CONCEPT_IMAGES,
    PresignedUpload,
    PresignRequest,
    PresignResponse,
    Rejected,
    VerifyRequest,
    VerifyResponse,
)
from easel_webui.access import Access, CurrentUser, PortalDep, Routes
from easel_webui.auth import User
from easel_webui.errors import NotFound, PortalError
from easel_webui.ownership import claim_library_entry
from easel_webui.routes.common import blocking, redirect
from easel_webui.safetensors_header import SafetensorsError, header_length
from easel_webui.storage import (
    IMAGE_EXTENSIONS,
    MAX_LORA_BYTES,
    check_file_name,
    check_set_name,
)
from easel_webui.templating import render
from easel_webui.uploads import STAGING, check_upload

routes = Routes()
M = TypeVar("M", bound=BaseModel)


@routes.get("/models", access=Access.USER)
def models_page(request: Request, portal: PortalDep, user: CurrentUser) -> Response:
    sets = portal.bucket.concept_sets(None if user.is_admin else user.username)
    for entry in sets:
        entry["thumbs"] = [portal.bucket.url(key) for key in entry["images"][:8]]
        entry["count"] = len(entry["images"])
    models = portal.bucket.models()
    portal.bucket.attach_manifests(models)
    return render(request, "models.html", models=models, loras=portal.bucket.loras(), sets=sets,
                  min_images=MIN_CONCEPT_IMAGES)


def _check_safetensors_header(head: bytes) -> None:
    try:
        header_length(head)
    except SafetensorsError as exc:
        raise PortalError(f"file: {exc}") from None


@routes.post("/models/loras", access=Access.USER)
async def upload_lora(request: Request, portal: PortalDep, user: CurrentUser) -> Response:
    form = await request.form()
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        return redirect("/models", error="file: choose a .safetensors file")
    try:
        name = check_file_name(str(upload.filename or ""), field="file name")
        if not name.endswith(".safetensors"):
            raise PortalError("file name: LoRAs are uploaded as .safetensors files")
        size = getattr(upload, "size", None)
        if size is not None and size > MAX_LORA_BYTES:
            raise PortalError("file: larger than 2 GB")
        head = await upload.read(8)
        _check_safetensors_header(head)
        await upload.seek(0)
        key = f"loras/{name}"
        exists = await blocking(portal.bucket.exists, key)
        if exists and not form.get("replace"):
            raise PortalError(f"file name: {name} is already in the library (tick replace)")
        # only the entry's owner (or an administrator) replaces it
        await blocking(claim_library_entry, portal.table, user, key, exists=exists)
        await blocking(portal.clients.s3.upload_fileobj, upload.file, portal.bucket.name, key,
                       ExtraArgs={"ContentType": "application/octet-stream"})
    except PortalError as exc:
        return redirect("/models", error=exc.message)
    return redirect("/models", notice=f"LoRA {name} uploaded.")


async def _json_body(request: Request, model: type[M], shape: str) -> M:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise PortalError(f"{where}: {first['msg']} (send JSON {shape})") from None


@routes.post("/models/concepts/presign", access=Access.USER)
async def presign_concepts(request: Request, portal: PortalDep, user: CurrentUser) -> Response:
    """Pre-signed POSTs into the user's staging prefix; `/models/concepts/verify` moves them in."""
    body = await _json_body(request, PresignRequest, "{set, files: [{name, type}]}")
    uploads = [PresignedUpload(**await blocking(
        portal.bucket.presigned_concept_upload,
        owner=user.username, set_name=body.set, file_name=item.name,
    )) for item in body.files]
    answer = PresignResponse(uploads=uploads, max_bytes=MAX_CONCEPT_FILE_BYTES,
                             verify="/models/concepts/verify")
    return JSONResponse(answer.model_dump())


@routes.post("/models/concepts/verify", access=Access.USER)
async def verify_concepts(request: Request, portal: PortalDep, user: CurrentUser) -> Response:
    """Check what the browser posted to S3; only files that pass are listed and trainable."""
    body = await _json_body(request, VerifyRequest, "{set, names: [file name, ...]}")
    stored: list[str] = []
    rejected: list[Rejected] = []
    for name in body.names:
        try:
            await blocking(portal.bucket.verify_concept_upload, owner=user.username,
                           set_name=body.set, file_name=name)
        except PortalError as exc:
            rejected.append(Rejected(name=name[:200], error=exc.message))
        else:
            stored.append(name)
    return JSONResponse(VerifyResponse(stored=stored, rejected=rejected).model_dump())


@routes.post("/models/concepts/upload", access=Access.USER)
async def upload_concepts(request: Request, portal: PortalDep, user: CurrentUser) -> Response:
    """Fallback when the browser cannot reach S3 directly: files go through the portal.

    Each file gets the verify step's checks; a file that fails them is reported, not stored.
    """
    form = await request.form()
    set_name = check_set_name(str(form.get("set", "")))
    stored: list[str] = []
    rejected: list[Rejected] = []
    for upload in form.getlist("files"):
        if not isinstance(upload, UploadFile):
            continue
        name = str(upload.filename or "")
        try:
            name = check_file_name(name)
            data = await upload.read(MAX_CONCEPT_FILE_BYTES + 1)
            if len(data) > MAX_CONCEPT_FILE_BYTES:
                raise PortalError(f"{name}: larger than {MAX_CONCEPT_FILE_BYTES // 1024**2} MB")
            content_type = await blocking(check_upload, name, data)
            await blocking(portal.bucket.write, f"concepts/{user.username}/{set_name}/{name}",
                           data, content_type=content_type)
        except PortalError as exc:
            rejected.append(Rejected(name=name[:200], error=exc.message))
        else:
            stored.append(name)
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse(VerifyResponse(stored=stored, rejected=rejected).model_dump())
    if rejected:
        return redirect("/models", error="; ".join(r.error for r in rejected)[:500])
    return redirect("/models", notice=f"{len(stored)} files uploaded to {set_name}.")


def _set_owner(user: User, owner: str) -> str:
    if owner != user.username and not user.is_admin:
        raise NotFound("No such concept set.")
    return owner


@routes.get("/models/concepts/{owner}/{set_name}", access=Access.USER)
def concept_set(owner: str, set_name: str, portal: PortalDep, user: CurrentUser) -> Any:
    _set_owner(user, owner)
    prefix = f"concepts/{owner}/{check_set_name(set_name)}/"
    objects, _ = portal.bucket.list(prefix)
    if not objects:
        raise NotFound("No such concept set.")
    return {"set": set_name, "owner": owner, "files": [
        {"name": o.key[len(prefix):], "size": o.size,
         "url": portal.bucket.url(o.key) if o.key.lower().endswith(IMAGE_EXTENSIONS) else None}
        for o in objects
    ]}


@routes.post("/models/concepts/{owner}/{set_name}/delete", access=Access.USER)
def delete_concept_set(owner: str, set_name: str, portal: PortalDep,
                       user: CurrentUser) -> Response:
    _set_owner(user, owner)
    set_name = check_set_name(set_name)
    count = portal.bucket.delete_prefix(f"concepts/{owner}/{set_name}/")
    portal.bucket.delete_prefix(f"concepts/{owner}/{STAGING}/{set_name}/")
    if not count:
        raise NotFound("No such concept set.")
    return redirect("/models", notice=f"Concept set {set_name} deleted ({count} files).")


@routes.post("/models/concepts/{owner}/{set_name}/files/delete", access=Access.USER)
async def delete_concept_file(request: Request, owner: str, set_name: str, portal: PortalDep,
                              user: CurrentUser) -> Response:
    _set_owner(user, owner)
    form = await request.form()
    name = check_file_name(str(form.get("name", "")))
    key = f"concepts/{owner}/{check_set_name(set_name)}/{name}"
    if not await blocking(portal.bucket.exists, key):
        raise NotFound("No such file.")
    await blocking(portal.clients.s3.delete_object, Bucket=portal.bucket.name, Key=key)
    return redirect("/models", notice=f"{name} deleted.")


