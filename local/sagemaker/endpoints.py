"""Endpoints as local inference-server processes: Creating -> InService | Failed."""

from __future__ import annotations

import http.client
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from easel_contracts.readiness import Ping
from local.processes import ManagedProcess, ProcessRegistry, free_port, log_tail
from local.sagemaker import s3io
from local.sagemaker.arns import ArnFactory
from local.sagemaker.records import RecordStore, now
from local.settings import StandInSettings

log = logging.getLogger(__name__)

FAILURE_REASON_MAX = 1024
# how the inference server's readiness states read as deploy steps
_SERVER_STEPS = {"loading": "loading the model", "warming": "warming up"}
_LIVE_STATUSES = ("InService", "Creating", "Updating", "SystemUpdating")
# A server process that dies more often than this within the window is not restarted again.
_MAX_RESTARTS = 3
_RESTART_WINDOW_S = 600.0


class StepProgress:
    """Reports a long deploy step (download, unpack, load, warm-up) as it goes: to the terminal
    every few seconds, and as the endpoint's status message (``message``) whenever asked."""

    def __init__(self, endpoint: str, step: str, total: int = 0, *, interval: float = 2.0,
                 say: Any = None) -> None:
        self.endpoint = endpoint
        self.step = step
        self.total = total
        self.done = 0
        self.detail = ""
        self._interval = interval
        self._say = say or log.info
        self._started = self._last = time.monotonic()
        self.started_at = time.time()
        self._say("endpoint %s: %s%s...", endpoint, step,
                  f" ({total / 1e6:,.0f} MB)" if total else "")

    def message(self) -> str:
        """What the step has done so far, e.g. ``downloading ...: 812 of 2,133 MB (38 %) at
        402 MB/s`` or ``loading the model (12 s)``."""
        elapsed = time.monotonic() - self._started
        if self.total or self.done:
            rate = self.done / max(elapsed, 1e-6) / 1e6
            of = f" of {self.total / 1e6:,.0f} MB ({100 * self.done / self.total:.0f} %)" \
                if self.total else " MB"
            return f"{self.step}: {self.done / 1e6:,.0f}{of} at {rate:,.0f} MB/s"
        return f"{self.step}{f': {self.detail}' if self.detail else ''} ({elapsed:.0f} s)"

    def __call__(self, count: int) -> None:
        self.done += count
        current = time.monotonic()
        if current - self._last >= self._interval:
            self._last = current
            rate = self.done / max(current - self._started, 1e-6) / 1e6
            share = f" ({100 * self.done / self.total:.0f} %)" if self.total else ""
            self._say("endpoint %s: %s %.0f MB%s at %.0f MB/s", self.endpoint, self.step,
                      self.done / 1e6, share, rate)

    def finish(self) -> float:
        elapsed = time.monotonic() - self._started
        rate = f" ({self.done / max(elapsed, 1e-6) / 1e6:.0f} MB/s)" if self.done else ""
        self._say("endpoint %s: %s done in %.1f s%s", self.endpoint, self.step, elapsed, rate)
        return elapsed


class DeployError(Exception):
    """Why an endpoint could not be brought up (user-facing FailureReason)."""


@dataclass
class ServingProcess:
    """The inference server running one endpoint config."""

    process: ManagedProcess
    port: int
    variant_name: str
    config_name: str
    model_dir: Path

    def is_alive(self) -> bool:
        return self.process.poll() is None


def primary_container(model: dict[str, Any]) -> dict[str, Any]:
    if model.get("PrimaryContainer"):
        return dict(model["PrimaryContainer"])
    containers = model.get("Containers") or []
    return dict(containers[0]) if containers else {}


def _truncate(text: str, limit: int = FAILURE_REASON_MAX) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def ping(port: int, *, timeout: float = 2.0) -> int | None:
    """The status of ``GET /ping`` on the loopback port, or None if nothing answers."""
    return probe(port, timeout=timeout)[0]


def probe(port: int, *, timeout: float = 2.0) -> tuple[int | None, Ping | None]:
    """``GET /ping``: its status and the server's readiness (``easel_contracts.readiness``)
    when the body is one (another server's body is not: then None)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", "/ping")
        response = connection.getresponse()
        body = response.read(64 * 1024)
    except OSError:
        return None, None
    finally:
        connection.close()
    try:
        return response.status, Ping.model_validate_json(body)
    except ValueError:
        return response.status, None


class EndpointManager:
    """Runs, watches and stops the inference-server process of every endpoint."""

    def __init__(
        self,
        *,
        records: RecordStore,
        s3: Any,
        settings: StandInSettings,
        work_root: Path,
        log_root: Path,
        arns: ArnFactory,
        registry: ProcessRegistry | None = None,
        on_in_service: Callable[[str], object] | None = None,
    ) -> None:
        self._registry = registry
        # Called with the endpoint's name each time it becomes InService, as SageMaker's
        # "Endpoint State Change" event reaches the stack's scaler.
        self._on_in_service = on_in_service
        self._records = records
        self._s3 = s3
        self._settings = settings
        self._work_root = work_root
        self._log_root = log_root
        self._arns = arns
        self._lock = threading.RLock()
        self._serving: dict[str, ServingProcess] = {}
        self._deploys: dict[str, tuple[threading.Thread, threading.Event]] = {}
        self._restarts: dict[str, list[float]] = {}
        # the step each deploy is in now: its status message while the endpoint is Creating
        self._steps: dict[str, StepProgress] = {}
        self._closing = threading.Event()
        self._monitor = threading.Thread(target=self._watch, name="endpoint-monitor", daemon=True)
        self._monitor.start()

    # --- public operations (arguments already validated by the API layer)

    def log_path(self, name: str) -> Path:
        return self._log_root / "endpoints" / f"{name}.log"

    def start_deploy(self, name: str, *, config: dict[str, Any], model: dict[str, Any]) -> None:
        """Bring up ``config`` for endpoint ``name`` in the background."""
        cancel = threading.Event()
        thread = threading.Thread(
            target=self._deploy,
            args=(name, config, model, cancel),
            name=f"deploy-{name}",
            daemon=True,
        )
        with self._lock:
            self._deploys[name] = (thread, cancel)
        thread.start()

    def progress(self, name: str) -> tuple[str, float] | None:
        """(status message, epoch seconds the step began) of a deploy in progress, else None."""
        with self._lock:
            step = self._steps.get(name)
        if step is None:
            return None
        return step.message(), step.started_at

    def _step(self, name: str, step: str, total: int = 0) -> StepProgress:
        """A new deploy step of endpoint ``name``, reported as it goes."""
        progress = StepProgress(name, step, total)
        with self._lock:
            self._steps[name] = progress
        return progress

    def serving(self, name: str) -> ServingProcess | None:
        with self._lock:
            return self._serving.get(name)

    def is_deploying(self, name: str) -> bool:
        with self._lock:
            entry = self._deploys.get(name)
            return entry is not None and entry[0].is_alive()

    def stop_endpoint(self, name: str) -> None:
        """Cancel a deploy in progress and end the endpoint's process (waits for both)."""
        with self._lock:
            deploy = self._deploys.pop(name, None)
            serving = self._serving.pop(name, None)
        if deploy is not None:
            thread, cancel = deploy
            cancel.set()
            thread.join(timeout=self._settings.stop_grace_s + 30)
            with self._lock:  # a deploy that finished meanwhile may have registered a process
                late = self._serving.pop(name, None)
            if late is not None:
                late.process.terminate(grace_seconds=self._settings.stop_grace_s)
        if serving is not None:
            serving.process.terminate(grace_seconds=self._settings.stop_grace_s)

    def remove_files(self, name: str) -> None:
        shutil.rmtree(self._work_root / name, ignore_errors=True)

    def resume(self) -> None:
        """After a restart: start again every endpoint that was live when the runtime stopped."""
        for record in self._records.all("endpoint"):
            name = record["EndpointName"]
            status = record.get("EndpointStatus")
            # An endpoint still Creating restarts its pending config; one in service (or in
            # an update that the stop interrupted) restarts the config that was serving.
            deployed = (
                record.get("_pending")
                if status == "Creating"
                else (record.get("_deployed") or record.get("_pending"))
            )
            if status == "Deleting":
                self._records.delete("endpoint", name)
                self.remove_files(name)
            elif status in _LIVE_STATUSES and deployed:
                self._records.update(
                    "endpoint", name, EndpointStatus="Creating", LastModifiedTime=now()
                )
                self.start_deploy(name, config=deployed["config"], model=deployed["model"])

    def shutdown(self) -> None:
        """End every process this manager started."""
        self._closing.set()
        with self._lock:
            names = set(self._serving) | set(self._deploys)
        for name in names:
            self.stop_endpoint(name)
        self._monitor.join(timeout=5)

    # --- deploy

    def _deploy(
        self,
        name: str,
        config: dict[str, Any],
        model: dict[str, Any],
        cancel: threading.Event,
    ) -> None:
        try:
            self._deploy_steps(name, config, model, cancel)
        finally:
            with self._lock:
                self._steps.pop(name, None)

    def _deploy_steps(
        self,
        name: str,
        config: dict[str, Any],
        model: dict[str, Any],
        cancel: threading.Event,
    ) -> None:
        variant = config["ProductionVariants"][0]
        updating = (self._records.get("endpoint", name) or {}).get("EndpointStatus") == "Updating"
        try:
            model_dir = self._prepare_model(name, model)
            if cancel.is_set():
                return
            serving = self._start_server(name, config, model, variant, model_dir, cancel)
        except DeployError as exc:
            self._deploy_failed(name, str(exc), updating=updating)
            return
        except Exception as exc:  # noqa: BLE001 - any surprise becomes a Failed endpoint
            log.exception("deploy of endpoint %s failed", name)
            self._deploy_failed(name, f"Internal error while deploying: {exc}", updating=updating)
            return
        if serving is None:
            return  # cancelled
        with self._lock:
            if cancel.is_set():
                old = serving
            else:
                old = self._serving.get(name)
                self._serving[name] = serving
        if old is not None:
            old.process.terminate(grace_seconds=self._settings.stop_grace_s)
        if cancel.is_set():
            return
        self._records.update(
            "endpoint",
            name,
            EndpointStatus="InService",
            EndpointConfigName=config["EndpointConfigName"],
            FailureReason=None,
            LastModifiedTime=now(),
            _deployed={"config": config, "model": model},
        )
        log.info("endpoint %s: InService", name)
        self._prune_model_dirs(name, keep=serving)
        self._announce_in_service(name)

    def _announce_in_service(self, name: str) -> None:
        if self._on_in_service is None:
            return
        try:
            self._on_in_service(name)
        except Exception:  # noqa: BLE001 - a failing listener never fails the endpoint
            log.exception("InService listener failed for endpoint %s", name)

    def _deploy_failed(self, name: str, reason: str, *, updating: bool) -> None:
        reason = _truncate(reason)
        if updating and self.serving(name) is not None:
            # SageMaker rolls a failed update back: the old config keeps serving.
            self._records.update(
                "endpoint",
                name,
                EndpointStatus="InService",
                FailureReason=reason,
                LastModifiedTime=now(),
            )
        else:
            self._records.update(
                "endpoint",
                name,
                EndpointStatus="Failed",
                FailureReason=reason,
                LastModifiedTime=now(),
            )

    def _prepare_model(self, name: str, model: dict[str, Any]) -> Path:
        """Fetch and unpack the model data into a folder (reused if already unpacked)."""
        container = primary_container(model)
        endpoint_dir = self._work_root / name
        source_uri, kind = _model_source(container)
        if source_uri is None:
            model_dir = endpoint_dir / "model-empty"
            model_dir.mkdir(parents=True, exist_ok=True)
            return model_dir
        try:
            fingerprint = s3io.data_fingerprint(self._s3, source_uri, field="ModelDataUrl")
            model_dir = endpoint_dir / f"model-{fingerprint}"
            ready_marker = endpoint_dir / f"model-{fingerprint}.ready"
            if ready_marker.exists() and model_dir.is_dir():
                return model_dir
            shutil.rmtree(model_dir, ignore_errors=True)
            model_dir.mkdir(parents=True)
            total = s3io.prefix_size(self._s3, source_uri, field="ModelDataUrl")
            if kind == "archive":
                archive = endpoint_dir / f".download-{fingerprint}.tar.gz"
                _require_single_object(self._s3, source_uri)
                progress = self._step(name, f"downloading {source_uri}", total)
                s3io.download_object(self._s3, source_uri, archive, field="ModelDataUrl",
                                     on_bytes=progress)
                progress.finish()
                unpack = self._step(name, "unpacking model.tar.gz")
                try:
                    s3io.extract_tar(archive, model_dir)
                finally:
                    archive.unlink(missing_ok=True)
                unpack.finish()
            elif kind == "object":
                _require_single_object(self._s3, source_uri)
                target = model_dir / source_uri.rstrip("/").rsplit("/", 1)[-1]
                progress = self._step(name, f"downloading {source_uri}", total)
                s3io.download_object(self._s3, source_uri, target, field="ModelDataSource",
                                     on_bytes=progress)
                progress.finish()
            else:
                progress = self._step(name, f"downloading {source_uri}", total)
                count = s3io.download_prefix(self._s3, source_uri, model_dir, field="S3Uri",
                                             on_bytes=progress)
                if count == 0:
                    raise s3io.S3DataError(f"no objects found under {source_uri}")
                progress.finish()
        except s3io.S3DataError as exc:
            raise DeployError(f"Failed to download model data from {source_uri}: {exc}") from exc
        ready_marker.write_text(source_uri)
        return model_dir

    def _prune_model_dirs(self, name: str, *, keep: ServingProcess) -> None:
        for path in (self._work_root / name).glob("model-*"):
            if path.is_dir() and path != keep.model_dir:
                shutil.rmtree(path, ignore_errors=True)
                path.with_name(path.name + ".ready").unlink(missing_ok=True)

    def _start_server(
        self,
        name: str,
        config: dict[str, Any],
        model: dict[str, Any],
        variant: dict[str, Any],
        model_dir: Path,
        cancel: threading.Event,
    ) -> ServingProcess | None:
        command = self._settings.resolved_serve_command()
        if command is None:
            raise DeployError(
                "The inference server entry point `serve` is not installed in this environment "
                "(install containers/inference)."
            )
        port = free_port()
        env = self._server_env(name, model, model_dir, port)
        process = ManagedProcess(
            command,
            env=env,
            log_path=self.log_path(name),
            cwd=self._work_root / name,
            registry=self._registry,
        )
        serving = ServingProcess(
            process=process,
            port=port,
            variant_name=variant["VariantName"],
            config_name=config["EndpointConfigName"],
            model_dir=model_dir,
        )
        timeout = float(
            variant.get("ContainerStartupHealthCheckTimeoutInSeconds")
            or self._settings.endpoint_startup_timeout_s
        )
        deadline = time.monotonic() + timeout
        loading = self._step(name, "starting the inference server")
        state = None
        while True:
            if cancel.is_set():
                process.terminate(grace_seconds=self._settings.stop_grace_s)
                return None
            code = process.poll()
            if code is not None:
                process.terminate(grace_seconds=1)
                raise DeployError(
                    f"The primary container for production variant {variant['VariantName']} "
                    f"exited with code {code} before it passed the ping health check. "
                    f"Log tail: {log_tail(self.log_path(name), max_chars=700)}"
                )
            status, readiness = probe(port)
            if status == 200:
                loading.finish()
                return serving
            if readiness is not None and readiness.status != state:
                # the server's own steps (loading the model, warming up) as it reports them
                state = readiness.status
                loading.finish()
                loading = self._step(name, _SERVER_STEPS.get(state, state))
            if readiness is not None and readiness.status == "failed":
                # final (easel_contracts.readiness): SageMaker would wait out the health check
                process.terminate(grace_seconds=self._settings.stop_grace_s)
                raise DeployError(
                    f"The primary container for production variant {variant['VariantName']} "
                    f"could not start: {readiness.detail or 'see the endpoint log'}"
                )
            if readiness is not None:
                loading.detail = readiness.detail or ""
            if time.monotonic() > deadline:
                process.terminate(grace_seconds=self._settings.stop_grace_s)
                raise DeployError(
                    f"The primary container for production variant {variant['VariantName']} "
                    f"did not pass the ping health check within {timeout:g} seconds. "
                    f"Log tail: {log_tail(self.log_path(name), max_chars=700)}"
                )
            cancel.wait(0.25)

    def _server_env(
        self, name: str, model: dict[str, Any], model_dir: Path, port: int
    ) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self._settings.process_env)
        env.setdefault("HF_HUB_OFFLINE", "1")
        env["EASEL_LORA_CACHE_DIR"] = str(self._work_root / name / "lora-cache")
        env.update(
            {k: str(v) for k, v in (primary_container(model).get("Environment") or {}).items()}
        )
        env.update(self._settings.device_env())
        env.update(
            {
                "EASEL_MODEL_DIR": str(model_dir),
                "SAGEMAKER_BIND_TO_PORT": str(port),
                "EASEL_HOST": "127.0.0.1",
            }
        )
        return env

    # --- watching

    def _watch(self) -> None:
        """Replace an endpoint's server process that died while serving, as SageMaker replaces
        an unhealthy instance (the endpoint stays InService; calls fail until it answers again).
        A process that keeps dying (more than `_MAX_RESTARTS` in `_RESTART_WINDOW_S`) marks
        the endpoint Failed with its log tail instead."""
        while not self._closing.wait(1.0):
            with self._lock:
                dead = [(n, s) for n, s in self._serving.items() if not s.is_alive()]
                for name, _ in dead:
                    self._serving.pop(name, None)
            for name, serving in dead:
                code = serving.process.poll()
                serving.process.terminate(grace_seconds=1)
                record = self._records.get("endpoint", name) or {}
                deployed = record.get("_deployed")
                recent = [t for t in self._restarts.get(name, [])
                          if time.monotonic() - t < _RESTART_WINDOW_S]
                if (deployed and record.get("EndpointStatus") == "InService"
                        and len(recent) < _MAX_RESTARTS and not self._closing.is_set()):
                    self._restarts[name] = [*recent, time.monotonic()]
                    log.warning("endpoint %s: the inference server exited with code %s; "
                                "starting a new one", name, code)
                    self._records.update(
                        "endpoint", name, LastModifiedTime=now(),
                        FailureReason=_truncate(
                            f"The inference server exited unexpectedly with code {code}; "
                            "it was replaced."),
                    )
                    self.start_deploy(name, config=deployed["config"], model=deployed["model"])
                    continue
                self._records.update(
                    "endpoint",
                    name,
                    EndpointStatus="Failed",
                    FailureReason=_truncate(
                        f"The inference server exited unexpectedly with code {code}"
                        + (f" ({len(recent)} times in {_RESTART_WINDOW_S:g} s)" if recent else "")
                        + f". Log tail: {log_tail(self.log_path(name), max_chars=700)}"
                    ),
                    LastModifiedTime=now(),
                )

    def is_restarting(self, name: str) -> bool:
        """True while a replacement for a dead server process is starting."""
        return self.serving(name) is None and self.is_deploying(name)


def _model_source(container: dict[str, Any]) -> tuple[str | None, str]:
    """(S3 URI, kind) of a container's model data; kind is archive|prefix|object."""
    if container.get("ModelDataUrl"):
        return container["ModelDataUrl"], "archive"
    source = (container.get("ModelDataSource") or {}).get("S3DataSource")
    if not source:
        return None, "none"
    compressed = source.get("CompressionType") == "Gzip"
    if source.get("S3DataType") == "S3Object":
        return source["S3Uri"], "archive" if compressed else "object"
    return source["S3Uri"], "archive" if compressed else "prefix"


def _require_single_object(s3: Any, uri: str) -> None:
    bucket, key = s3io.parse_s3_uri(uri, field="ModelDataUrl")
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except Exception as exc:  # noqa: BLE001 - missing object, missing bucket, ...
        raise s3io.S3DataError(
            f"the object {uri} does not exist (ModelDataUrl must name a model.tar.gz object; "
            "use ModelDataSource with S3DataType S3Prefix and CompressionType None for an "
            "uncompressed folder)"
        ) from exc
