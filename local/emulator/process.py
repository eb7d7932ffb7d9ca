"""Start and stop the emulator subprocess and read its change counter."""

from __future__ import annotations

import http.client
import json
import os
import sys
import time
from pathlib import Path

from local.processes import ManagedProcess, ProcessRegistry, log_tail

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class EmulatorError(RuntimeError):
    """The emulator could not be started or reached."""


class EmulatorProcess:
    """The moto server subprocess on a free 127.0.0.1 port."""

    def __init__(
        self,
        *,
        run_dir: Path,
        startup_timeout: float = 60.0,
        registry: ProcessRegistry | None = None,
        blob_dir: Path | None = None,
    ) -> None:
        self._run_dir = run_dir
        self._blob_dir = blob_dir
        self._registry = registry
        self._startup_timeout = startup_timeout
        self._process: ManagedProcess | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise EmulatorError("the emulator is not running")
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> None:
        self._run_dir.mkdir(parents=True, exist_ok=True)
        port_file = self._run_dir / "emulator.port"
        port_file.unlink(missing_ok=True)
        env = dict(os.environ)
        # The child must import this same `local` package, however the parent found it.
        env["PYTHONPATH"] = os.pathsep.join(
            [str(_PACKAGE_ROOT), *filter(None, [env.get("PYTHONPATH")])]
        )
        command = [sys.executable, "-m", "local.emulator.server_main",
                   "--port-file", str(port_file)]
        if self._blob_dir is not None:
            command += ["--blob-dir", str(self._blob_dir)]
        self._process = ManagedProcess(
            command,
            env=env,
            log_path=self._run_dir / "emulator.log",
            registry=self._registry,
        )
        deadline = time.monotonic() + self._startup_timeout
        while not port_file.exists():
            if self._process.poll() is not None:
                raise EmulatorError(
                    "the emulator exited at start: " + log_tail(self._process.log_path)
                )
            if time.monotonic() > deadline:
                self.stop()
                raise EmulatorError("the emulator did not start in time")
            time.sleep(0.05)
        self.port = int(port_file.read_text())

    def generation(self) -> int:
        """How many state-changing requests the emulator has seen (monotonic)."""
        if self.port is None:
            raise EmulatorError("the emulator is not running")
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            connection.request("GET", "/_easel/generation")
            return int(json.loads(connection.getresponse().read())["generation"])
        finally:
            connection.close()

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate(grace_seconds=5.0)
        self._process = None
        self.port = None
