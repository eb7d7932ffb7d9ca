"""Who may use or change what a user names by S3 path (issue 15).

- `training/<job>/` belongs to the job's creator (and administrators): nobody else may train on,
  or deploy, another user's result or checkpoints.
- Library entries (`loras/<file>`, `models/<name>`) have an owner record in the table
  (`easel_contracts.table.library_entry_key`): only the owner or an administrator replaces or
  deletes one. Entries an administrator wrote are shared: anyone may use them. An entry with no
  owner record (put in the bucket by an administrator, outside the portal) is shared and only
  administrators replace it. A `models/` entry whose record says it is not shared is usable only
  by its owner and administrators.
"""

from __future__ import annotations

from easel_contracts import table as keys
from easel_contracts.s3uri import S3Uri
from easel_webui.auth import User
from easel_webui.errors import Forbidden, PortalError
from easel_webui.store import Table, iso_now


def library_entry(uri: S3Uri) -> str | None:
    """The library entry a key lies in (`models/<name>` or `loras/<file>`), else None."""
    parts = uri.key.split("/")
    if parts[0] in ("models", "loras") and len(parts) > 1 and parts[1]:
        return f"{parts[0]}/{parts[1]}"
    return None


def check_model_readable(table: Table, user: User, uri: S3Uri, *, field: str) -> None:
    """`PortalError` unless `user` may train on or deploy the model at `uri` (already known to
    lie under models/ or training/ of the data bucket)."""
    if uri.is_under("training/"):
        job = uri.key.split("/")[1]
        record = table.get(*keys.training_job_key(job)) if job else None
        if record is None or (record.get("owner") != user.username and not user.is_admin):
            raise PortalError(f"{field}: training/{job}/ is not one of your training jobs")
        return
    entry = library_entry(uri)
    if entry is None:
        raise PortalError(f"{field}: name a model under models/<name>")
    record = table.get(*keys.library_entry_key(entry))
    if record and not record.get("shared") and record.get("owner") != user.username \
            and not user.is_admin:
        raise PortalError(f"{field}: {entry} is another user's private model")


def claim_library_entry(table: Table, user: User, entry: str, *, exists: bool) -> None:
    """Before `user` writes library entry `entry`: record them as its owner when it is new, or
    check that they may replace it (its owner or an administrator); `Forbidden` otherwise."""
    record_key = keys.library_entry_key(entry)
    for _ in range(2):
        record = table.get(*record_key)
        if record is not None:
            if record.get("owner") == user.username or user.is_admin:
                return
            raise Forbidden(f"{entry} belongs to {record.get('owner')}; only they or an "
                            "administrator can replace it. Choose another file name.")
        if exists and not user.is_admin:
            raise Forbidden(f"{entry} was put in the library by an administrator; only an "
                            "administrator can replace it. Choose another file name.")
        item = {**record_key.item(), "owner": user.username, "shared": user.is_admin,
                "created_at": iso_now()}
        if table.put(item, must_not_exist=True):
            return
    raise Forbidden(f"{entry} was just claimed by someone else; choose another file name.")
