"""The data-parallel launcher, with stand-in workers (fast): what it does that torchrun would not.

torchrun (torch.distributed.run) exits 1 with a SignalException traceback when it gets SIGTERM,
even when every worker saved its checkpoint and exited 0, and SIGKILLs workers still saving after
its shutdown timeout (30 s by default). A SageMaker stop or spot interruption must end with exit 0
after the checkpoint, and a worker that dies without a word must still leave a reason in
``output/failure``. These tests pin those properties (see containers/training/README.md).
"""

from __future__ import annotations

import sys
import threading
import time

from easel_contracts.progress import parse_progress
from easel_training import launcher
from easel_training.failure import EXIT_INPUT, EXIT_OK, EXIT_RUNTIME
from easel_training.paths import JobPaths
from easel_training.stopping import StopRequest

WORKER = """
import os, signal, sys, time
from pathlib import Path

out = Path(os.environ["FAKE_OUT"])
rank = os.environ["RANK"]
stopped = []
signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))
(out / f"started-{rank}").touch()
behaviour = os.environ.get(f"FAKE_RANK{rank}", "train")
if behaviour == "die":
    os.kill(os.getpid(), signal.SIGKILL)
if behaviour == "bad-input":
    sys.exit(2)
if behaviour == "die-later":  # after the other rank has written its reason
    time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGKILL)
if behaviour == "reset-by-peer":  # a survivor failing in its collective, reason first
    Path(os.environ["FAKE_FAILURE"]).parent.mkdir(parents=True, exist_ok=True)
    Path(os.environ["FAKE_FAILURE"]).write_text("RuntimeError: Connection reset by peer")
    while not stopped:
        time.sleep(0.05)
    sys.exit(1)
if behaviour == "fail":
    Path(os.environ["FAKE_FAILURE"]).parent.mkdir(parents=True, exist_ok=True)
    Path(os.environ["FAKE_FAILURE"]).write_text("training failed: out of memory")
    sys.exit(1)
if behaviour == "stuck":  # in a collective that never returns: SIGTERM does not end it
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(0.05)
while not stopped:
    time.sleep(0.05)
time.sleep(float(os.environ.get("FAKE_SAVE_SECONDS", "0")))  # writing its checkpoint
(out / f"saved-{rank}").touch()
"""


def _launch(tmp_path, monkeypatch, **env):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(launcher, "WORKER_COMMAND", (sys.executable, str(script)))
    monkeypatch.setenv("FAKE_OUT", str(out))
    paths = JobPaths(tmp_path / "opt_ml")
    monkeypatch.setenv("FAKE_FAILURE", str(paths.failure))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    stop = StopRequest()
    result: dict[str, int] = {}
    thread = threading.Thread(
        target=lambda: result.update(code=launcher.launch_workers(2, paths=paths, stop=stop)))
    thread.start()
    return thread, stop, out, paths, result


def _wait(predicate, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_stop_waits_for_every_workers_checkpoint_and_exits_0(tmp_path, monkeypatch):
    # No deadline on a stop: a worker saving longer than the failure grace still finishes.
    monkeypatch.setattr(launcher, "KILL_GRACE_SECONDS", 0.2)
    thread, stop, out, paths, result = _launch(tmp_path, monkeypatch, FAKE_SAVE_SECONDS="1.5")
    _wait(lambda: (out / "started-0").exists() and (out / "started-1").exists())
    stop.request()  # what the entry point's SIGTERM handler does
    thread.join(timeout=60)
    assert result["code"] == EXIT_OK
    assert (out / "saved-0").exists() and (out / "saved-1").exists()
    assert not paths.failure.exists()


def test_a_worker_that_dies_silently_fails_the_job_with_a_reason(tmp_path, monkeypatch):
    thread, _, out, paths, result = _launch(tmp_path, monkeypatch, FAKE_RANK1="die")
    thread.join(timeout=60)
    assert result["code"] == EXIT_RUNTIME
    assert paths.failure.read_text().startswith(
        "training worker 1 of 2 was killed by SIGKILL (exit code -9)")
    assert parse_progress(paths.progress.read_bytes()).status == "failed"
    assert (out / "saved-0").exists()  # the healthy worker was stopped, and stopped cleanly


def test_a_rank_killed_by_a_signal_is_the_reason_even_when_a_survivor_wrote_first(
        tmp_path, monkeypatch):
    thread, _, _, paths, result = _launch(tmp_path, monkeypatch, FAKE_RANK0="reset-by-peer",
                                          FAKE_RANK1="die-later")
    thread.join(timeout=60)
    assert result["code"] == EXIT_RUNTIME
    reason = paths.failure.read_text()
    assert reason.startswith("training worker 1 of 2 was killed by SIGKILL"), reason
    assert "reset by peer" not in reason
    assert parse_progress(paths.progress.read_bytes()).status == "failed"


def test_a_worker_stuck_after_another_failed_is_killed_and_the_first_reason_stays(
        tmp_path, monkeypatch):
    monkeypatch.setattr(launcher, "KILL_GRACE_SECONDS", 0.5)
    thread, _, _, paths, result = _launch(tmp_path, monkeypatch, FAKE_RANK0="fail",
                                          FAKE_RANK1="stuck")
    thread.join(timeout=30)
    assert not thread.is_alive(), "the launcher waited on a stuck worker"
    assert result["code"] == EXIT_RUNTIME
    # the launcher's own SIGKILL is not blamed: the failed worker's reason stays
    assert paths.failure.read_text().strip() == "training failed: out of memory"


def test_a_worker_refusing_its_inputs_keeps_the_input_exit_code(tmp_path, monkeypatch):
    thread, _, _, _, result = _launch(tmp_path, monkeypatch, FAKE_RANK0="bad-input")
    thread.join(timeout=60)
    assert result["code"] == EXIT_INPUT


def test_the_launcher_does_not_import_the_entry_point():
    # cli imports the launcher; the launcher's exit codes and failure writing live in failure.py
    import subprocess

    check = ("import sys, easel_training.launcher; "
             "sys.exit('easel_training.cli' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", check], check=False).returncode == 0
