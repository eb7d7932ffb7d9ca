"""S3 locations as ``s3://bucket/key`` URIs: one parser for every component.

``S3Uri.parse`` splits a URI into its bucket and key (or raises ``ValueError`` saying what is
wrong); ``str()`` formats it back. A key never has ``.`` or ``..`` segments: a path that could
climb out of the prefix it names (on S3, or in the folder it is downloaded to) is refused.

Use ``S3Uri`` as a pydantic field type to get the parsed value (it accepts and serializes as the
URI string), or ``S3UriStr`` to keep a plain, checked string.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    ValidationError,
    model_serializer,
    model_validator,
)

SCHEME = "s3://"
# S3's bucket naming rule (general purpose buckets): 3-63 characters of lower-case letters,
# digits, '.' and '-', starting and ending with a letter or digit, no '..'.
# https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html
BUCKET_PATTERN = r"^(?!.*\.\.)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
_BUCKET_RE = re.compile(BUCKET_PATTERN)


class S3Uri(BaseModel):
    """A parsed ``s3://bucket/key``; an empty key or one ending in ``/`` names a prefix."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bucket: str
    key: str = ""

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            return _split(value)
        return value

    @model_validator(mode="after")
    def _check(self) -> S3Uri:
        if not _BUCKET_RE.match(self.bucket):
            raise ValueError(
                f"{self.bucket!r} is not a valid S3 bucket name (3-63 lower-case letters, "
                "digits, '.' or '-')"
            )
        if any(part in (".", "..") for part in self.key.split("/")):
            raise ValueError(f"{self} must not contain '..' or '.' path segments")
        return self

    @model_serializer
    def _to_text(self) -> str:
        return str(self)

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        """``s3://bucket/key`` -> ``S3Uri``; ``ValueError`` with a readable message otherwise."""
        try:
            return cls.model_validate(uri)
        except ValidationError as exc:
            messages = [str(error.get("ctx", {}).get("error", error["msg"]))
                        for error in exc.errors()]
            raise ValueError("; ".join(messages)) from None

    @classmethod
    def of(cls, bucket: str, key: str = "") -> S3Uri:
        return cls(bucket=bucket, key=key)

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"

    @property
    def is_prefix(self) -> bool:
        """True when the URI names a prefix (a folder), not one object."""
        return not self.key or self.key.endswith("/")

    @property
    def prefix(self) -> str:
        """The key as a prefix: ``''`` or ending in ``/``."""
        return self.key if self.is_prefix else self.key + "/"

    def as_prefix(self) -> S3Uri:
        return S3Uri(bucket=self.bucket, key=self.prefix)

    def join(self, *parts: str) -> S3Uri:
        """A location below this one: parts joined with single slashes."""
        tail = "/".join(part.strip("/") for part in parts if part.strip("/"))
        key = self.prefix + tail if tail else self.key
        if parts and parts[-1].endswith("/") and key and not key.endswith("/"):
            key += "/"
        return S3Uri(bucket=self.bucket, key=key)

    def is_under(self, prefix: str, *, bucket: str | None = None) -> bool:
        """True when this location lies under key ``prefix`` (of ``bucket``, when given)."""
        if bucket is not None and self.bucket != bucket:
            return False
        prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        return self.key.startswith(prefix)

    def relative_to(self, prefix: str) -> str:
        """The key with ``prefix`` removed; ``ValueError`` when it does not lie under it."""
        if not self.is_under(prefix):
            raise ValueError(f"{self} is not under {prefix!r}")
        return self.key[len(prefix if prefix.endswith("/") or not prefix else prefix + "/"):]


def _split(uri: str) -> dict[str, str]:
    text = uri.strip()
    if not text.startswith(SCHEME) or len(text) == len(SCHEME):
        raise ValueError(f"{uri!r} is not an s3://bucket/key URI")
    bucket, _, key = text[len(SCHEME):].partition("/")
    return {"bucket": bucket, "key": key}


def check_s3_uri(value: str) -> str:
    """The URI itself when it parses (see ``S3Uri``), else ``ValueError``."""
    S3Uri.parse(value)
    return value


S3UriStr = Annotated[str, AfterValidator(check_s3_uri)]
