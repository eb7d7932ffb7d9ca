"""How a job ends badly: exit codes, the failure reason and progress.json marked ``failed``.

SageMaker shows the first 1024 characters of ``output/failure`` as the job's FailureReason
(``easel_contracts.progress.FAILURE_REASON_MAX``). The entry point, the worker processes and the
launcher that supervises them all end a job through this module.
"""

from __future__ import annotations

import os
from pathlib import Path

from easel_training.paths import JobPaths
from easel_training.progress import mark_failed

EXIT_OK = 0        # completed, or stopped by SIGTERM after a checkpoint
EXIT_RUNTIME = 1   # any other failure
EXIT_INPUT = 2     # bad inputs (hyperparameters, channels, images, base model)

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


def replace_failure(paths: JobPaths, reason: str) -> None:
    """Record ``reason`` in place of any reason already written (the launcher, for a cause that
    no worker could report), and mark progress.json ``failed``."""
    paths.failure.parent.mkdir(parents=True, exist_ok=True)
    tmp = paths.failure.with_name(f".{paths.failure.name}.{os.getpid()}.tmp")
    tmp.write_text(reason.strip()[:MAX_FAILURE_CHARS] + "\n", encoding="utf-8")
    os.replace(tmp, paths.failure)
    try:
        mark_failed(paths.progress)
    except OSError:
        pass


def clear_stale_failure(path: Path) -> None:
    """Remove a failure file left by an earlier attempt in the same folder (local reruns)."""
    path.unlink(missing_ok=True)


def fail_job(paths: JobPaths, reason: str, *, main_process: bool = True) -> None:
    """Record a failure: the reason (first one wins) and, from the main process, progress.json
    marked ``failed`` at the step it had reached."""
    write_failure(paths.failure, reason)
    if not main_process:
        return
    try:
        mark_failed(paths.progress)
    except OSError:
        pass  # the reason is written; a read-only checkpoints folder must not hide it
