"""Writing the failure reason SageMaker shows as FailureReason (its first 1024 characters)."""

from __future__ import annotations

import os
from pathlib import Path

MAX_FAILURE_CHARS = 8192


def write_failure(path: Path, reason: str) -> bool:
    """Write ``reason`` to ``path`` unless a reason is already there (the first one wins).

    Returns whether this call wrote it. Several processes of a data-parallel job may fail
    together; the exclusive create keeps the earliest, most specific reason.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    text = reason.strip() or "training failed for an unknown reason"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text[:MAX_FAILURE_CHARS] + "\n")
    return True


def clear_stale_failure(path: Path) -> None:
    """Remove a failure file left by an earlier attempt in the same folder (local reruns)."""
    path.unlink(missing_ok=True)
