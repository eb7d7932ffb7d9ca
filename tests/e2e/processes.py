"""Which processes a process started (read from /proc), to check that none outlive it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from pathlib import Path

Identity = tuple[int, int]  # (pid, start time in clock ticks): survives pid reuse


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(parent pid, process group, start time) of a live process, else None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    if fields[0] == "Z":  # a zombie has ended; only its parent's wait is missing
        return None
    return int(fields[1]), int(fields[2]), int(fields[19])


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def descendants(root: int) -> set[Identity]:
    """Every live process below ``root`` (children, their children, ...)."""
    children: dict[int, list[tuple[int, int]]] = {}
    for pid in _all_pids():
        stat = _stat(pid)
        if stat is not None:
            children.setdefault(stat[0], []).append((pid, stat[2]))
    found: set[Identity] = set()
    todo = [root]
    while todo:
        for pid, start in children.get(todo.pop(), []):
            if (pid, start) not in found:
                found.add((pid, start))
                todo.append(pid)
    return found


def still_alive(identities: set[Identity]) -> set[Identity]:
    alive = set()
    for pid, start in identities:
        stat = _stat(pid)
        if stat is not None and stat[2] == start:
            alive.add((pid, start))
    return alive


def group_members(pgid: int) -> list[int]:
    return [pid for pid in _all_pids() if (stat := _stat(pid)) is not None and stat[1] == pgid]


def describe(pids: set[Identity] | list[int]) -> list[str]:
    lines = []
    for item in pids:
        pid = item[0] if isinstance(item, tuple) else item
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            cmd = "?"
        lines.append(f"{pid}: {cmd[:160]}")
    return lines


def kill_all(identities: set[Identity]) -> None:
    for pid, _start in still_alive(identities):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0
