"""The SageMaker stand-in service: records, process managers and the HTTP front together."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from local.processes import ProcessRegistry
from local.sagemaker.arns import ArnFactory
from local.sagemaker.control import SageMakerControlPlane
from local.sagemaker.endpoints import EndpointManager
from local.sagemaker.http_server import StandInServer
from local.sagemaker.records import RecordStore
from local.sagemaker.runtime_api import RuntimeService
from local.sagemaker.training import TrainingManager
from local.settings import StandInSettings


class SageMakerStandIn:
    """Serves the SageMaker and SageMaker-runtime APIs on a free 127.0.0.1 port.

    ``on_in_service(name)`` runs each time an endpoint becomes InService (local mode passes the
    scaler, as the stack's EventBridge rule does). ``state_dir`` holds its records
    (``records/``), endpoint and training work folders
    (``endpoints/``, ``training-jobs/``) and process logs (``logs/``).
    """

    def __init__(
        self,
        *,
        state_dir: Path,
        s3: Any,
        settings: StandInSettings,
        arns: ArnFactory,
        cloudwatch: Any | None = None,
        registry: ProcessRegistry | None = None,
        on_in_service: Callable[[str], object] | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.settings = settings
        self.records = RecordStore(state_dir / "records")
        self.endpoints = EndpointManager(
            records=self.records,
            s3=s3,
            settings=settings,
            work_root=state_dir / "endpoints",
            log_root=state_dir / "logs",
            arns=arns,
            registry=registry,
            on_in_service=on_in_service,
        )
        self.training = TrainingManager(
            records=self.records,
            s3=s3,
            settings=settings,
            work_root=state_dir / "training-jobs",
            log_root=state_dir / "logs",
            registry=registry,
        )
        self.runtime = RuntimeService(
            records=self.records,
            endpoints=self.endpoints,
            s3=s3,
            settings=settings,
            arns=arns,
            cloudwatch=cloudwatch,
        )
        self.control = SageMakerControlPlane(
            records=self.records, endpoints=self.endpoints, training=self.training, arns=arns
        )
        self._server: StandInServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the SageMaker stand-in is not running")
        return f"http://127.0.0.1:{self._server.port}"

    def start(self) -> None:
        """Answer requests, then restart what was running when the runtime last stopped."""
        self._server = StandInServer(control=self.control, runtime=self.runtime)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="sagemaker-stand-in",
            daemon=True,
        )
        self._thread.start()
        self.training.resume()
        self.endpoints.resume()

    def stop(self) -> None:
        """Stop answering, then end every process started (jobs upload their results first)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.runtime.cancel_queued()
        self.training.shutdown()
        self.endpoints.shutdown()
        self.runtime.shutdown()
        self._server = None
        self._thread = None
