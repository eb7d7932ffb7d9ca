"""A studio killed with SIGKILL leaves its portal running; the next start ends it first."""

from __future__ import annotations

import argparse
import fcntl
import subprocess
import sys
import time

from local_helpers import process_is_running, wait_for

from local import studio
from local.processes import ProcessRegistry, free_port, port_is_open

LISTENER = ("import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1])));"
            " s.listen(); time.sleep(600)")


def _orphan_portal(state, port: int) -> subprocess.Popen:
    """A process holding the portal's port, listed as a killed studio would have left it."""
    command = [sys.executable, "-c", LISTENER, str(port)]
    process = subprocess.Popen(command, start_new_session=True)
    studio.studio_registry(state).add(process.pid, command)
    wait_for(lambda: port_is_open(port), timeout=10)
    return process


def _args(state, port: int) -> argparse.Namespace:
    # a model path that does not exist: run() stops right after its start-up checks
    return argparse.Namespace(state=state, port=port, host="127.0.0.1", model=state / "none",
                              device="cpu", clean=False, stage="default")


def test_the_next_start_ends_the_orphaned_portal_instead_of_failing_on_its_port(tmp_path):
    port = free_port()
    orphan = _orphan_portal(tmp_path, port)
    try:
        assert studio.run(_args(tmp_path, port)) == 2  # got past the "port in use" check
        orphan.wait(timeout=10)
        assert not port_is_open(port)
    finally:
        if orphan.poll() is None:
            orphan.kill()


def test_a_listed_pid_now_running_another_command_is_left_alone(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                             start_new_session=True)
    try:
        ProcessRegistry(tmp_path / "run" / "studio.json").add(other.pid, ["not", "this"])
        time.sleep(0.2)
        assert studio.end_orphans(tmp_path) == []
        assert process_is_running(other.pid)
    finally:
        other.kill()
        other.wait()


def test_processes_of_a_running_studio_are_not_orphans(tmp_path):
    port = free_port()
    orphan = _orphan_portal(tmp_path, port)
    try:
        with (tmp_path / ".lock").open("w") as held:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a live LocalAws holds it
            assert studio.end_orphans(tmp_path) == []
        assert orphan.poll() is None
    finally:
        orphan.kill()
        orphan.wait()


def test_an_orphan_started_by_its_shebang_line_is_ended(tmp_path):
    """The `train` and `serve` console scripts run through their #! line, so the kernel shows
    `python .../train` where `.../train` was listed: such an orphan is still ended (the
    reliability run found a trainer outliving a SIGKILLed studio)."""
    script = tmp_path / "train"
    script.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(600)\n")
    script.chmod(0o755)
    command = [str(script)]
    orphan = subprocess.Popen(command, start_new_session=True)
    try:
        registry = ProcessRegistry(tmp_path / "run" / "processes.json")
        registry.add(orphan.pid, command)
        time.sleep(0.3)  # past its exec
        assert registry.end_leftovers() == [orphan.pid]
        orphan.wait(timeout=10)
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()
