"""Child processes the local runtime starts: own process group, log file, clean termination."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_open(port: int, *, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def log_tail(path: Path, *, max_chars: int = 1500) -> str:
    """The last ``max_chars`` characters of a log file ('' when it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_chars * 4))
            text = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return text[-max_chars:].strip()


class ManagedProcess:
    """A child started in its own session (process group), output appended to a log file.

    Terminating it signals the whole group, so grandchildren (e.g. worker processes of a
    server) end with it.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str],
        log_path: Path,
        cwd: Path | None = None,
        registry: ProcessRegistry | None = None,
    ) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self.command = list(command)
        with log_path.open("ab") as log:
            log.write(f"--- starting: {' '.join(self.command)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(  # noqa: S603 - commands come from our own config
                self.command,
                env=dict(env),
                cwd=str(cwd) if cwd else None,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._lock = threading.Lock()
        self._registry = registry
        if registry is not None:
            registry.add(self._popen.pid, self.command)

    @property
    def pid(self) -> int:
        return self._popen.pid

    def poll(self) -> int | None:
        """The exit code, or None while it runs."""
        return self._popen.poll()

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the exit; None if it still runs after ``timeout`` seconds."""
        try:
            return self._popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the child's whole process group (ignored once it is gone)."""
        try:
            os.killpg(self._popen.pid, signum)
        except ProcessLookupError:
            pass
        except PermissionError:
            pass

    def terminate(self, *, grace_seconds: float = 10.0) -> int | None:
        """SIGTERM the group, then SIGKILL it after ``grace_seconds``; returns the exit code."""
        with self._lock:
            if self._popen.poll() is None:
                self.signal_group(signal.SIGTERM)
                if self.wait(grace_seconds) is None:
                    self.signal_group(signal.SIGKILL)
                    self.wait(10.0)
            # The leader may be gone while members of its group still run: finish them too,
            # and return only once none of them runs any more.
            if live_group_members(self._popen.pid):
                self.signal_group(signal.SIGKILL)
                wait_until(lambda: not live_group_members(self._popen.pid), timeout=10)
            if self._registry is not None:
                self._registry.remove(self._popen.pid)
            return self._popen.poll()


def live_group_members(pgid: int) -> list[int]:
    """Pids of the processes of group ``pgid`` that are alive (zombies excluded; Linux /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def wait_until(predicate, *, timeout: float, interval: float = 0.2) -> bool:  # noqa: ANN001
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _start_ticks(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (tells a pid apart from a later reuse of it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def _command_line(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)[:300]


def _is_ours(pid: int, entry: dict[str, object]) -> bool:
    """The process still runs and is the one listed: same start time and same command line.

    A script run by its ``#!`` line (the ``serve`` and ``train`` console scripts) shows its
    interpreter first: ``/venv/bin/python /venv/bin/train`` for a listed ``/venv/bin/train``."""
    if entry.get("start") is None or _start_ticks(pid) != entry["start"]:
        return False
    command = entry.get("command")
    if command is None:
        return True
    actual = _command_line(pid)
    return actual is not None and (actual == command or actual.endswith(f" {command}"))


class ProcessRegistry:
    """A file listing the process groups a runtime started, so a later start can end the
    ones a crash (SIGKILL, power loss of the terminal) left behind."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()

    def _read(self) -> dict[str, dict[str, object]]:
        try:
            data = json.loads(self._path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, entries: dict[str, dict[str, object]]) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entries, indent=2))
        tmp.replace(self._path)

    def add(self, pid: int, command: Sequence[str]) -> None:
        with self._lock:
            entries = self._read()
            # argv as given: /proc/<pid>/cmdline shows exactly this once the child has exec'd
            entries[str(pid)] = {"start": _start_ticks(pid), "command": " ".join(command)[:300]}
            self._write(entries)

    def remove(self, pid: int) -> None:
        with self._lock:
            entries = self._read()
            if entries.pop(str(pid), None) is not None:
                self._write(entries)

    def end_leftovers(self) -> list[int]:
        """Kill the groups of listed processes that still run; returns their pids."""
        ended = []
        with self._lock:
            for key, entry in self._read().items():
                pid = int(key)
                if _is_ours(pid, entry):
                    for signum in (signal.SIGTERM, signal.SIGKILL):
                        try:
                            os.killpg(pid, signum)
                        except (ProcessLookupError, PermissionError):
                            break
                        if signum == signal.SIGTERM:
                            wait_until(lambda p=pid: _start_ticks(p) is None, timeout=5)
                    ended.append(pid)
            self._write({})
        return ended
