"""Gallery search: the user's images (an admin's: everyone's) filtered by prompt words, model and
a date range, newest first, a page at a time.

The date range narrows the table query itself (the sort keys begin with the creation time); the
prompt and model filters are applied to the records read, at most `MAX_EXAMINED` of them per
page, so one request costs a bounded number of reads whatever it asks. The cursor is the key of
the last record examined; a page that stops at the bound says so and offers to go on.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from easel_contracts import table as keys
from easel_contracts.table import GSI_PK, GSI_SK, PK, SK
from easel_webui.auth import User
from easel_webui.errors import PortalError

PAGE_SIZE = 30
MAX_EXAMINED = 600
_READ = 100  # items per table query
MAX_TEXT = 200
MAX_CURSOR = 2048
_END = "~"  # sorts after every character of an ISO timestamp and an image id


@dataclass(frozen=True)
class GalleryQuery:
    words: tuple[str, ...] = ()
    model: str = ""
    since: str = ""
    until: str = ""
    after: dict[str, str] | None = None

    @property
    def filtered(self) -> bool:
        return bool(self.words or self.model or self.since or self.until)


@dataclass
class GalleryPage:
    images: list[dict[str, Any]] = field(default_factory=list)
    cursor: str | None = None
    # the page stopped at the read bound before it was full: more may match further on
    partial: bool = False


def _day(value: str, what: str) -> str:
    value = value.strip()
    if not value:
        return ""
    if len(value) == 10:
        try:
            return dt.date.fromisoformat(value).isoformat()
        except ValueError:
            pass
    raise PortalError(f"{what}: give a date as YYYY-MM-DD, e.g. 2026-01-31")


def _encode_cursor(key: dict[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key, sort_keys=True).encode()).decode()


def _decode_cursor(text: str, *, partition: str, index: bool) -> dict[str, str]:
    expected = {PK, SK, GSI_PK, GSI_SK} if index else {PK, SK}
    where = GSI_PK if index else PK
    try:
        if len(text) > MAX_CURSOR:
            raise ValueError
        key = json.loads(base64.urlsafe_b64decode(text.encode()))
        if not isinstance(key, dict) or set(key) != expected or key[where] != partition or \
                not all(isinstance(v, str) for v in key.values()):
            raise ValueError
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise PortalError("The gallery's page link is not valid any more; "
                          "start again from the first page.") from None
    return key


def parse_query(params: Any) -> tuple[GalleryQuery, str]:
    """The search form's fields (`q`, `model`, `since`, `until`) and the page cursor (`after`)
    checked; answers the query and the raw cursor text (decoded once the source is known)."""
    text = str(params.get("q", "") or "")
    model = str(params.get("model", "") or "").strip()
    if len(text) > MAX_TEXT:
        raise PortalError(f"Search text: at most {MAX_TEXT} characters.")
    if len(model) > MAX_TEXT:
        raise PortalError(f"Model: at most {MAX_TEXT} characters.")
    since = _day(str(params.get("since", "") or ""), "From date")
    until = _day(str(params.get("until", "") or ""), "To date")
    if since and until and since > until:
        raise PortalError("The From date is after the To date; swap them.")
    words = tuple(word.lower() for word in text.split())
    return GalleryQuery(words=words, model=model.lower(), since=since, until=until), \
        str(params.get("after", "") or "")


def image_model(record: dict[str, Any]) -> str:
    """The model an image was made with: as the server named it, else the checkpoint the request
    asked for (images made before the name was recorded), else empty (the endpoint's default)."""
    if record.get("model"):
        return str(record["model"])
    try:
        params = json.loads(record.get("params") or "{}")
    except ValueError:
        return ""
    return str((params.get("override_settings") or {}).get("sd_model_checkpoint") or "")


def _matches(record: dict[str, Any], query: GalleryQuery) -> bool:
    prompt = str(record.get("prompt", "")).lower()
    if any(word not in prompt for word in query.words):
        return False
    return not query.model or query.model in image_model(record).lower()


def search(generation: Any, *, user: User, query: GalleryQuery, after: str = "",
           page_size: int = PAGE_SIZE) -> GalleryPage:
    """One page of the gallery for `user`, newest first, matching `query`."""
    index = user.is_admin
    partition = keys.IMAGES_INDEX if index else keys.owner_partition(user.username)
    prefix = "" if index else keys.owner_sort_prefix(keys.OWNER_IMAGE)
    low = prefix + (query.since or "0")  # a key may not be empty; timestamps begin with digits
    high = prefix + (f"{query.until}{_END}" if query.until else _END)
    start = _decode_cursor(after, partition=partition, index=index) if after else None
    table = generation.table
    page = GalleryPage()
    examined = 0
    while examined < MAX_EXAMINED:
        items, more = table.query_range(partition, index=index, low=low, high=high, start=start,
                                        limit=min(_READ, MAX_EXAMINED - examined))
        records = items if index else _referenced(table, items)
        for item, record in zip(items, records, strict=True):
            examined += 1
            last = {name: item[name] for name in ((PK, SK, GSI_PK, GSI_SK) if index
                                                  else (PK, SK))}
            if record is not None and _matches(record, query):
                page.images.append(generation.present(record))
                if len(page.images) == page_size:
                    page.cursor = _encode_cursor(last)
                    return page
            start = last
        if more is None:
            return page
    page.cursor, page.partial = _encode_cursor(start or {}), True
    return page


def _referenced(table: Any, owner_items: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
    """The images the owner items point at (None where one was deleted since)."""
    refs = [keys.referenced_key(item) for item in owner_items]
    found = table.get_many(refs) if refs else {}
    return [found.get(ref) for ref in refs]
