"""Settings of the SageMaker stand-in (each can also come from an environment variable)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

DEVICES = ("cpu", "cuda")


def console_script(name: str) -> list[str] | None:
    """The ``name`` console script of this interpreter's environment, else one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which(name)
    return [found] if found else None


@dataclass(frozen=True)
class StandInSettings:
    """How the stand-in runs endpoints and training jobs."""

    device: str = "cpu"
    serve_command: Sequence[str] | None = None  # None: the `serve` console script
    train_command: Sequence[str] | None = None  # None: the `train` console script
    endpoint_startup_timeout_s: float = 600.0
    invoke_timeout_s: float = 60.0
    async_invoke_timeout_s: float = 900.0
    max_invoke_body_bytes: int = 6 * 1024 * 1024
    checkpoint_sync_interval_s: float = 3.0
    stop_grace_s: float = 30.0
    process_env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}; got {self.device!r}")
        for name in (
            "endpoint_startup_timeout_s",
            "invoke_timeout_s",
            "async_invoke_timeout_s",
            "checkpoint_sync_interval_s",
            "stop_grace_s",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> StandInSettings:
        """Defaults, then ``EASEL_LOCAL_*`` environment variables, then ``overrides``."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        numeric = {
            "EASEL_LOCAL_ENDPOINT_STARTUP_TIMEOUT": "endpoint_startup_timeout_s",
            "EASEL_LOCAL_INVOKE_TIMEOUT": "invoke_timeout_s",
            "EASEL_LOCAL_ASYNC_INVOKE_TIMEOUT": "async_invoke_timeout_s",
            "EASEL_LOCAL_CHECKPOINT_SYNC_INTERVAL": "checkpoint_sync_interval_s",
            "EASEL_LOCAL_STOP_GRACE": "stop_grace_s",
        }
        for variable, attribute in numeric.items():
            if env.get(variable):
                try:
                    values[attribute] = float(env[variable])
                except ValueError as exc:
                    raise ValueError(f"{variable} must be a number of seconds") from exc
        if env.get("EASEL_LOCAL_DEVICE"):
            values["device"] = env["EASEL_LOCAL_DEVICE"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)  # type: ignore[arg-type]

    def resolved_serve_command(self) -> list[str] | None:
        return list(self.serve_command) if self.serve_command else console_script("serve")

    def resolved_train_command(self) -> list[str] | None:
        return list(self.train_command) if self.train_command else console_script("train")

    def device_env(self) -> dict[str, str]:
        """Environment that picks the device for a child process.

        It overrides the model's / job's `EASEL_REQUIRE_CUDA=1` (set for SageMaker's GPU hosts):
        the stand-in requires CUDA only when it was told to run on the GPU.
        """
        env = {"EASEL_DEVICE": self.device,
               "EASEL_REQUIRE_CUDA": "1" if self.device == "cuda" else "0"}
        if self.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        return env
