"""``LocalAws``: the AWS emulator and the SageMaker stand-in, started and stopped together."""

from __future__ import annotations

import fcntl
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from local.clients import LOCAL_ACCESS_KEY_ID, LOCAL_SECRET_ACCESS_KEY, local_client
from local.emulator.runner import Emulator
from local.names import LocalNames, resolve_names
from local.processes import ProcessRegistry
from local.sagemaker.arns import ArnFactory
from local.sagemaker.service import SageMakerStandIn
from local.scaling import scaling_listener
from local.settings import StandInSettings
from local.statefiles import read_json, write_json_atomic

# What a state folder holds; --clean removes exactly these, nothing else of the folder.
STATE_ENTRIES = ("emulator", "sagemaker", "run", "local.json")
_MARKER = "local.json"


class StateFolderError(RuntimeError):
    """The state folder cannot be used (message says why)."""


class LocalAws:
    """Start with ``with LocalAws(state_dir) as aws:``; ``aws.env`` points boto3 at it.

    The state folder is the truth: bucket content, table items and secrets (``emulator/``),
    the SageMaker records and work folders (``sagemaker/``). A restart with the same folder
    brings everything back; ``clean=True`` starts from nothing.
    """

    def __init__(
        self,
        state_dir: Path | str,
        *,
        clean: bool = False,
        device: str = "cpu",
        deployment_id: str | None = None,
        region: str | None = None,
        serve_command: Sequence[str] | None = None,
        train_command: Sequence[str] | None = None,
        settings: StandInSettings | None = None,
        snapshot_interval: float = 1.0,
    ) -> None:
        self.state_dir = Path(state_dir).expanduser().resolve()
        self.clean = clean
        self.names: LocalNames = resolve_names(deployment_id=deployment_id, region=region)
        self._settings = settings or StandInSettings.from_env(
            device=device, serve_command=serve_command, train_command=train_command
        )
        self._snapshot_interval = snapshot_interval
        self._lock_handle: Any = None
        self._emulator: Emulator | None = None
        self._stand_in: SageMakerStandIn | None = None
        self.admin_password: str | None = None
        self.env: dict[str, str] = {}

    # --- lifecycle

    def start(self) -> LocalAws:
        self._prepare_state_dir()
        registry = ProcessRegistry(self.state_dir / "run" / "processes.json")
        emulator = Emulator(
            data_dir=self.state_dir / "emulator",
            run_dir=self.state_dir / "run",
            names=self.names,
            snapshot_interval=self._snapshot_interval,
            registry=registry,
        )
        try:
            emulator.start()
        except BaseException:
            self._release_lock()
            raise
        self._emulator = emulator
        self.admin_password = emulator.new_admin_password
        try:
            aws_env = self._aws_env(emulator_url=emulator.url, sagemaker_url=None)
            settings = _with_process_env(self._settings, aws_env)
            stand_in = SageMakerStandIn(
                state_dir=self.state_dir / "sagemaker",
                s3=emulator.client("s3"),
                cloudwatch=emulator.client("cloudwatch"),
                settings=settings,
                arns=ArnFactory(region=self.names.region, account_id=self.names.account_id),
                registry=registry,
                on_in_service=scaling_listener(
                    deployment_id=self.names.deployment_id,
                    region=self.names.region,
                    table_name=self.names.table,
                    client=emulator.client,
                ),
            )
            self._stand_in = stand_in
            stand_in.start()
            self.env = self._aws_env(emulator_url=emulator.url, sagemaker_url=stand_in.url)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """End every process (endpoints, jobs, emulator) after saving the state to disk."""
        try:
            if self._stand_in is not None:
                self._stand_in.stop()
        finally:
            self._stand_in = None
            try:
                if self._emulator is not None:
                    self._emulator.stop()
            finally:
                self._emulator = None
                self._release_lock()

    def __enter__(self) -> LocalAws:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # --- conveniences

    @property
    def emulator_url(self) -> str:
        if self._emulator is None:
            raise RuntimeError("LocalAws is not running")
        return self._emulator.url

    @property
    def sagemaker_url(self) -> str:
        if self._stand_in is None:
            raise RuntimeError("LocalAws is not running")
        return self._stand_in.url

    @property
    def emulator_pid(self) -> int | None:
        return self._emulator.pid if self._emulator else None

    def client(self, service: str) -> Any:
        """A boto3 client for ``service`` pointed at the local AWS."""
        endpoint = self.sagemaker_url if service.startswith("sagemaker") else self.emulator_url
        return local_client(service, endpoint_url=endpoint, region=self.names.region)

    def save(self) -> None:
        """Write the emulator's content to the state folder now (it also happens by itself)."""
        if self._emulator is not None:
            self._emulator.save()

    # --- internals

    def _prepare_state_dir(self) -> None:
        if self.state_dir.exists() and not self.state_dir.is_dir():
            raise StateFolderError(f"state folder {self.state_dir} is not a folder")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            leftovers = ProcessRegistry(self.state_dir / "run" / "processes.json").end_leftovers()
            if leftovers:
                print(
                    f"local: ended {len(leftovers)} process(es) left running by a previous run",
                    file=sys.stderr,
                )
            if self.clean:
                for entry in STATE_ENTRIES:
                    path = self.state_dir / entry
                    if path.is_dir():
                        shutil.rmtree(path)
                    else:
                        path.unlink(missing_ok=True)
            marker = self.state_dir / _MARKER
            stored = read_json(marker, {})
            if stored and stored.get("deployment_id") != self.names.deployment_id:
                raise StateFolderError(
                    f"state folder {self.state_dir} belongs to deployment "
                    f"{stored.get('deployment_id')!r}, not {self.names.deployment_id!r}; use "
                    "another folder or start clean"
                )
            write_json_atomic(
                marker, {"deployment_id": self.names.deployment_id, "region": self.names.region}
            )
        except BaseException:
            self._release_lock()
            raise

    def _take_lock(self) -> None:
        """One running LocalAws per state folder (the lock ends with the process)."""
        handle = (self.state_dir / ".lock").open("w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            handle.close()
            raise StateFolderError(
                f"state folder {self.state_dir} is in use by another running local AWS"
            ) from exc
        self._lock_handle = handle

    def _release_lock(self) -> None:
        if self._lock_handle is not None:
            fcntl.flock(self._lock_handle, fcntl.LOCK_UN)
            self._lock_handle.close()
            self._lock_handle = None

    def _aws_env(self, *, emulator_url: str, sagemaker_url: str | None) -> dict[str, str]:
        env = {
            # Everything not listed below also goes to the emulator, never to real AWS.
            "AWS_ENDPOINT_URL": emulator_url,
            "AWS_ENDPOINT_URL_S3": emulator_url,
            "AWS_ENDPOINT_URL_DYNAMODB": emulator_url,
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": emulator_url,
            "AWS_ENDPOINT_URL_APPLICATION_AUTO_SCALING": emulator_url,
            "AWS_ENDPOINT_URL_CLOUDWATCH": emulator_url,
            "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS": emulator_url,
            "AWS_ENDPOINT_URL_IAM": emulator_url,
            "AWS_ENDPOINT_URL_STS": emulator_url,
            "AWS_DEFAULT_REGION": self.names.region,
            "AWS_REGION": self.names.region,
            "AWS_ACCESS_KEY_ID": LOCAL_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": LOCAL_SECRET_ACCESS_KEY,
            "EASEL_DEPLOYMENT_ID": self.names.deployment_id,
            "EASEL_BUCKET": self.names.bucket,
            "EASEL_TABLE": self.names.table,
            "EASEL_ADMIN_SECRET": self.names.admin_secret,
            "EASEL_SESSION_SECRET": self.names.session_secret,
            "EASEL_EXECUTION_ROLE_ARN": self.names.execution_role_arn,
            "EASEL_INFERENCE_IMAGE": self.names.inference_image,
            "EASEL_TRAINING_IMAGE": self.names.training_image,
        }
        if sagemaker_url is not None:
            env["AWS_ENDPOINT_URL_SAGEMAKER"] = sagemaker_url
            env["AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"] = sagemaker_url
        return env


def _with_process_env(settings: StandInSettings, aws_env: dict[str, str]) -> StandInSettings:
    from dataclasses import replace

    return replace(settings, process_env={**aws_env, **dict(settings.process_env)})
