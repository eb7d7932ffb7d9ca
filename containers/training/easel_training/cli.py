"""The ``train`` entry point (SageMaker runs ``docker run IMAGE train``).

Exit codes: 0 completed or stopped by SIGTERM (after a checkpoint), 2 bad inputs, 1 any other
failure. On failure the reason is in ``output/failure``; nothing is written there on success or
on a stop. With more than one GPU (or ``EASEL_NUM_PROCESSES`` > 1) the entry point starts one
worker process per device and supervises them.
"""

from __future__ import annotations

import os
import sys
import traceback

from easel_training.errors import TrainingInputError, TrainingRuntimeError
from easel_training.failure import (
    EXIT_INPUT,
    EXIT_OK,
    EXIT_RUNTIME,
    clear_stale_failure,
    fail_job,
    write_failure,
)
from easel_training.launcher import WORKER_FLAG, launch_workers
from easel_training.paths import JobPaths
from easel_training.stopping import StopRequest


def describe_runtime_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return ("training ran out of GPU memory: lower train_batch_size or resolution, or "
                    "set gradient_checkpointing=true or use_8bit_adam=true. " + text)
    except ImportError:
        pass
    lowered = text.lower()
    if "cuda" in lowered or "nccl" in lowered or "cublas" in lowered:
        return "training failed with a GPU error (the job did not finish): " + text
    return "training failed: " + text


def run_guarded(paths: JobPaths, stop: StopRequest) -> int:
    """Run one job (this process is the only worker or one of several) and map errors."""
    main_process = os.environ.get("RANK", "0") == "0"
    try:
        from easel_training.job import run_job

        outcome = run_job(paths=paths, stop=stop)
    except TrainingInputError as exc:
        reason = str(exc)
        print(f"easel-train failed: {reason}", file=sys.stderr, flush=True)
        fail_job(paths, reason, main_process=main_process)
        return EXIT_INPUT
    except (TrainingRuntimeError, Exception) as exc:  # noqa: BLE001 - every failure is reported
        traceback.print_exc()
        reason = str(exc) if isinstance(exc, TrainingRuntimeError) else describe_runtime_error(exc)
        fail_job(paths, reason, main_process=main_process)
        return EXIT_RUNTIME
    print(f"easel-train {outcome.status} at step {outcome.step}", flush=True)
    return EXIT_OK


def requested_processes(device_env: str | None) -> int:
    value = os.environ.get("EASEL_NUM_PROCESSES", "").strip()
    if value:
        try:
            count = int(value)
        except ValueError as exc:
            raise TrainingInputError(
                f"EASEL_NUM_PROCESSES must be a whole number, got {value!r}") from exc
        if not 1 <= count <= 64:
            raise TrainingInputError("EASEL_NUM_PROCESSES must be between 1 and 64")
        return count
    if (device_env or "auto").lower() == "cpu":
        return 1
    try:
        import torch

        return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1
    except ImportError:
        return 1


def main(argv: list[str] | None = None) -> int:
    del argv  # SageMaker passes "train"; everything else comes from the /opt/ml layout
    paths = JobPaths.from_env()
    stop = StopRequest()
    stop.install()
    try:
        return _main(paths, stop)
    finally:
        stop.uninstall()


def _main(paths: JobPaths, stop: StopRequest) -> int:
    if os.environ.get(WORKER_FLAG):
        return run_guarded(paths, stop)
    clear_stale_failure(paths.failure)
    try:
        from easel_training.job import read_hyperparameters

        read_hyperparameters(paths)  # fail before starting any worker
        processes = requested_processes(os.environ.get("EASEL_DEVICE"))
    except TrainingInputError as exc:
        print(f"easel-train failed: {exc}", file=sys.stderr, flush=True)
        write_failure(paths.failure, str(exc))
        return EXIT_INPUT
    if processes > 1:
        return launch_workers(processes, paths=paths, stop=stop)
    return run_guarded(paths, stop)


if __name__ == "__main__":
    raise SystemExit(main())
