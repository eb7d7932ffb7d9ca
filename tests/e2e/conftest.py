"""`make local` as a user runs it: `python -m local.studio` in its own process group.

The fixture starts the studio on a free port with a fresh state folder and the CPU device, reads
the portal URL and the admin password it prints, and always stops it again (SIGTERM to its group,
then SIGKILL) even when the test fails half way.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .processes import descendants, kill_all

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 150.0
URL_RE = re.compile(r"^\s*portal:\s+(http://\S+?)/?\s*$")
PASSWORD_RE = re.compile(r"^\s*password:\s+(\S+)\s*$")


@dataclass
class Studio:
    """A running `python -m local.studio` and what it printed."""

    process: subprocess.Popen
    state: Path
    url: str = ""
    password: str = ""
    stdout_lines: list[str] = field(default_factory=list)
    stderr_path: Path | None = None
    seen: set[tuple[int, int]] = field(default_factory=set)  # its descendants, as last seen

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/", 1)[0])

    def log_tail(self, lines: int = 40) -> str:
        """The end of the studio's stderr and of the portal log, for assertion messages."""
        parts = []
        for path in (self.stderr_path, self.state / "portal.log"):
            if path is not None and path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts)


def _read_stdout(studio: Studio, ready: threading.Event) -> None:
    assert studio.process.stdout is not None
    for raw in studio.process.stdout:
        line = raw.rstrip("\n")
        studio.stdout_lines.append(line)
        if match := URL_RE.match(line):
            studio.url = match.group(1)
        elif (match := PASSWORD_RE.match(line)) and studio.url:
            studio.password = match.group(1)
            ready.set()
    ready.set()  # stdout closed: the studio ended


def stop_group(process: subprocess.Popen, grace: float = 20.0) -> None:
    """Last-resort cleanup: SIGTERM the studio's group, then SIGKILL what is left."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        except ProcessLookupError:
            pass


@pytest.fixture
def studio(tmp_path: Path) -> Iterator[Studio]:
    state = tmp_path / "state"
    stderr_path = tmp_path / "studio.stderr.log"
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        # fast password hashing and checkpoint syncing: this is a test, not a deployment
        "EASEL_PASSWORD_HASH_TIME_COST": "1",
        "EASEL_PASSWORD_HASH_MEMORY_KIB": "1024",
        "EASEL_LOCAL_CHECKPOINT_SYNC_INTERVAL": "1",
    }
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        env.pop(key, None)
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            # --port 0: the studio picks a free port itself (no race) and prints it
            [sys.executable, "-m", "local.studio", "--state", str(state), "--port", "0",
             "--clean", "--device", "cpu"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True,
            start_new_session=True,  # its own process group, like a terminal job
        )
    started = Studio(process=process, state=state, stderr_path=stderr_path)
    ready = threading.Event()
    reader = threading.Thread(target=_read_stdout, args=(started, ready), daemon=True)
    reader.start()
    try:
        ready.wait(STARTUP_TIMEOUT_S)
        assert started.url and started.password, (
            f"the studio printed no portal URL and password within {STARTUP_TIMEOUT_S:.0f} s "
            f"(exit code {process.poll()}); stdout: {started.stdout_lines}\n{started.log_tail()}")
        yield started
    finally:
        if process.poll() is None:
            started.seen |= descendants(process.pid)
        stop_group(process)
        kill_all(started.seen)  # whatever the studio failed to stop must not outlive the test
        deadline = time.monotonic() + 5
        while reader.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
