"""The browser <-> portal concept upload: pre-signed POSTs to a staging prefix, then verify.

The browser asks for pre-signed POSTs (`PresignRequest` -> `PresignResponse`), posts each file
straight to S3, then asks the portal to verify what arrived (`VerifyRequest` ->
`VerifyResponse`). Only verified files are moved into the concept set; the rest are deleted and
reported with the reason.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MAX_FILES_PER_REQUEST = 200
# The fewest photos a concept set may be trained on: the form says it, the portal and
# `scripts/train` refuse a set with fewer before any job is started.
MIN_CONCEPT_IMAGES = 5
MAX_CONCEPT_FILE_BYTES = 30 * 1024**2


class PresignFile(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1, max_length=200)
    # What the browser says; the portal ignores it and sets the type from the extension.
    type: str = Field(default="", max_length=200)


class PresignRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    set: str = Field(min_length=1, max_length=100)
    files: list[PresignFile] = Field(min_length=1, max_length=MAX_FILES_PER_REQUEST)


class PresignedUpload(BaseModel):
    name: str
    key: str
    url: str
    fields: dict[str, str]


class PresignResponse(BaseModel):
    uploads: list[PresignedUpload]
    max_bytes: int
    verify: str = Field(description="where to POST a VerifyRequest once the files are in S3")


class VerifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    set: str = Field(min_length=1, max_length=100)
    names: list[str] = Field(min_length=1, max_length=MAX_FILES_PER_REQUEST)


class Rejected(BaseModel):
    name: str
    error: str


class VerifyResponse(BaseModel):
    stored: list[str]
    rejected: list[Rejected]
