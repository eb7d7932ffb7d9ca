"""Data-parallel launch: one worker process per device, supervised by the entry point.

Workers get the torch.distributed environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT, ...), which
accelerate turns into a process group (NCCL on GPUs, gloo on CPUs). A SIGTERM to the entry point
is passed on to every worker, which checkpoints and exits 0. If one worker fails, the others are
stopped so the job ends promptly with that worker's reason in ``output/failure``.

A worker killed by a signal the launcher did not send (the kernel's OOM killer, a segfault, an
operator's ``kill``) cannot write a reason; the survivors then fail in their next collective
("Connection reset by peer") and may write theirs first. That death is the cause, so the
launcher's reason naming the rank and the signal replaces theirs. Survivors stuck in a
collective that never returns (NCCL with a dead peer) are SIGKILLed after the grace period.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from easel_training.failure import EXIT_INPUT, EXIT_OK, EXIT_RUNTIME, fail_job, replace_failure
from easel_training.paths import JobPaths
from easel_training.stopping import StopRequest

POLL_SECONDS = 0.2
KILL_GRACE_SECONDS = 20.0  # after a worker failed; a stop has no deadline (SageMaker's own)
WORKER_FLAG = "EASEL_TRAIN_WORKER"
WORKER_COMMAND = (sys.executable, "-m", "easel_training")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_environment(base: dict[str, str], *, rank: int, world_size: int,
                       port: int) -> dict[str, str]:
    env = dict(base)
    env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
               LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port), **{WORKER_FLAG: "1"})
    if "OMP_NUM_THREADS" not in base:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // world_size))
    return env


def _terminate(processes: list[subprocess.Popen], sig: int,
               sent: list[set[int]]) -> None:
    for rank, process in enumerate(processes):
        if process.poll() is None:
            try:
                process.send_signal(sig)
            except ProcessLookupError:
                continue
            sent[rank].add(sig)


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _unprovoked_signal_death(codes: list[int | None],
                             sent: list[set[int]]) -> tuple[int, int] | None:
    """The first rank killed by a signal this launcher did not send to it, and its exit code."""
    for rank, code in enumerate(codes):
        if code is not None and code < 0 and -code not in sent[rank]:
            return rank, code
    return None


def signal_death_reason(rank: int, code: int, world_size: int) -> str:
    name = _signal_name(code)
    hint = (" (SIGKILL is often the kernel's out-of-memory killer: lower train_batch_size or "
            "resolution, or choose an instance with more memory)" if name == "SIGKILL" else "")
    return (f"training worker {rank} of {world_size} was killed by {name} (exit code {code}) "
            f"before the job finished; the other workers were stopped{hint}")


def launch_workers(world_size: int, *, paths: JobPaths, stop: StopRequest) -> int:
    port = free_port()
    processes = [
        subprocess.Popen(
            list(WORKER_COMMAND),
            env=worker_environment(dict(os.environ), rank=rank, world_size=world_size, port=port),
        )
        for rank in range(world_size)
    ]
    sent: list[set[int]] = [set() for _ in processes]
    forwarded = False
    failed_at: float | None = None
    cause: tuple[int, int] | None = None
    while any(p.poll() is None for p in processes):
        if stop.requested and not forwarded:
            _terminate(processes, signal.SIGTERM, sent)
            forwarded = True
        codes = [p.poll() for p in processes]
        if cause is None:
            cause = _unprovoked_signal_death(codes, sent)
            if cause is not None:  # at once, before the survivors' consequential reasons
                replace_failure(paths, signal_death_reason(*cause, world_size))
        if failed_at is None and any(code not in (None, 0) for code in codes):
            failed_at = time.monotonic()
            _terminate(processes, signal.SIGTERM, sent)
        if failed_at is not None and time.monotonic() - failed_at > KILL_GRACE_SECONDS:
            _terminate(processes, signal.SIGKILL, sent)
        time.sleep(POLL_SECONDS)
    codes = [p.returncode for p in processes]
    bad = [(rank, code) for rank, code in enumerate(codes) if code != 0]
    if not bad:
        return EXIT_OK
    cause = cause or _unprovoked_signal_death(codes, sent)
    if cause is not None:
        replace_failure(paths, signal_death_reason(*cause, world_size))
        return EXIT_RUNTIME
    rank, code = bad[0]
    fail_job(paths, f"training worker {rank} of {world_size} exited with code {code} before "
             "the job finished")
    return EXIT_INPUT if code == EXIT_INPUT else EXIT_RUNTIME
