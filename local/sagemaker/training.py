"""Training jobs as local `train` processes over a SageMaker /opt/ml layout."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from easel_contracts.progress import FAILURE_FILE, FAILURE_REASON_MAX, failure_reason
from local.processes import ManagedProcess, ProcessRegistry, log_tail
from local.sagemaker import s3io
from local.sagemaker.records import RecordStore, now
from local.settings import StandInSettings

log = logging.getLogger(__name__)

def interrupted_reason(job: dict[str, Any]) -> str:
    """Why a job running when the local runtime stopped (a crash, a SIGKILL of the studio) ended
    failed at the next start, and what is left of it."""
    reason = ("InternalServerError: the local runtime stopped (killed or crashed) while this job "
              "was running; its training process was ended at the next start.")
    checkpoints = (job.get("CheckpointConfig") or {}).get("S3Uri")
    if checkpoints:
        reason += f" Checkpoints synced before then are kept in {checkpoints}."
    return reason + " Submit the job again to train."


class JobError(Exception):
    """The job failed before or around the training process (user-facing reason)."""


class _Run:
    """Runtime handles of one job (not persisted)."""

    def __init__(self) -> None:
        self.process: ManagedProcess | None = None
        self.stop_requested = threading.Event()
        self.stop_secondary = "Stopped"
        self.thread: threading.Thread | None = None


class TrainingManager:
    """Lays out, runs, syncs, packs and stops training jobs."""

    def __init__(
        self,
        *,
        records: RecordStore,
        s3: Any,
        settings: StandInSettings,
        work_root: Path,
        log_root: Path,
        registry: ProcessRegistry | None = None,
    ) -> None:
        self._registry = registry
        self._records = records
        self._s3 = s3
        self._settings = settings
        self._work_root = work_root
        self._log_root = log_root
        self._lock = threading.Lock()
        self._runs: dict[str, _Run] = {}

    def log_path(self, name: str) -> Path:
        return self._log_root / "training-jobs" / f"{name}.log"

    def opt_ml(self, name: str) -> Path:
        return self._work_root / name / "opt_ml"

    def start(self, name: str) -> None:
        run = _Run()
        run.thread = threading.Thread(
            target=self._run_job, args=(name, run), name=f"train-{name}", daemon=True
        )
        with self._lock:
            self._runs[name] = run
        run.thread.start()

    def request_stop(self, name: str, *, secondary: str = "Stopped") -> None:
        """StopTrainingJob: Stopping now; SIGTERM, then SIGKILL after the grace period."""
        with self._lock:
            run = self._runs.get(name)
        self._set_status(name, "Stopping", "Stopping", "Stopping the training job")
        if run is not None:
            run.stop_secondary = secondary
            run.stop_requested.set()

    def resume(self) -> None:
        """After a restart, jobs that were running have lost their process (ended with the
        other orphans before this start): fail them with the reason, so none stays InProgress."""
        for record in self._records.all("training-job"):
            if record.get("TrainingJobStatus") in ("InProgress", "Stopping"):
                name = record["TrainingJobName"]
                self._finish(name, "Failed", "Failed", failure=interrupted_reason(record))

    def shutdown(self) -> None:
        """Stop every running job and wait for their uploads."""
        with self._lock:
            runs = dict(self._runs)
        for name, run in runs.items():
            if run.thread is not None and run.thread.is_alive():
                self.request_stop(name)
        for run in runs.values():
            if run.thread is not None:
                run.thread.join(timeout=self._settings.stop_grace_s + 60)

    # --- the job

    def _run_job(self, name: str, run: _Run) -> None:
        job = self._records.get("training-job", name)
        if job is None:
            return
        opt_ml = self.opt_ml(name)
        checkpoint_sync: s3io.FolderSync | None = None
        try:
            self._set_status(name, "InProgress", "Downloading", "Downloading input data")
            self._lay_out(job, opt_ml)
            if job.get("CheckpointConfig", {}).get("S3Uri"):
                checkpoint_sync = s3io.FolderSync(
                    self._s3,
                    opt_ml / "checkpoints",
                    job["CheckpointConfig"]["S3Uri"],
                    field="CheckpointConfig.S3Uri",
                )
                checkpoint_sync.download_existing()
            if run.stop_requested.is_set():
                self._finish(name, "Stopped", run.stop_secondary)
                return
            command = self._settings.resolved_train_command()
            if command is None:
                raise JobError(
                    "The training entry point `train` is not installed in this environment "
                    "(install containers/training)."
                )
            self._records.update("training-job", name, TrainingStartTime=now())
            self._set_status(
                name,
                "InProgress",
                "Training",
                "Training image download completed. Training in progress.",
            )
            exit_code = self._train(name, job, run, command, opt_ml, checkpoint_sync)
        except (JobError, s3io.S3DataError) as exc:
            self._finish(name, "Failed", "Failed", failure=f"ClientError: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - any surprise fails the job, never the service
            log.exception("training job %s failed in the stand-in", name)
            self._finish(name, "Failed", "Failed", failure=f"InternalServerError: {exc}")
            return

        self._set_status(name, None, "Uploading", "Uploading generated training model")
        upload_error = self._upload_results(job, opt_ml, checkpoint_sync)
        if run.stop_requested.is_set():
            self._finish(name, "Stopped", run.stop_secondary, artifacts=upload_error is None)
        elif exit_code == 0 and upload_error is None:
            self._finish(name, "Completed", "Completed", artifacts=True)
        elif exit_code == 0:
            self._finish(name, "Failed", "Failed", failure=f"ClientError: {upload_error}")
        else:
            self._finish(name, "Failed", "Failed", failure=self._failure_reason(name, exit_code))

    def _lay_out(self, job: dict[str, Any], opt_ml: Path) -> None:
        """The SageMaker training folder: config files, channels, empty output folders."""
        shutil.rmtree(opt_ml, ignore_errors=True)
        config_dir = opt_ml / "input" / "config"
        config_dir.mkdir(parents=True)
        for folder in ("model", "checkpoints", "output", "output/data"):
            (opt_ml / folder).mkdir(parents=True, exist_ok=True)
        hyperparameters = {k: str(v) for k, v in (job.get("HyperParameters") or {}).items()}
        (config_dir / "hyperparameters.json").write_text(json.dumps(hyperparameters, indent=2))
        resource = job.get("ResourceConfig") or {}
        hosts = [f"algo-{i + 1}" for i in range(int(resource.get("InstanceCount", 1)))]
        (config_dir / "resourceconfig.json").write_text(
            json.dumps(
                {
                    "current_host": hosts[0],
                    "hosts": hosts,
                    "current_instance_type": resource.get("InstanceType", "local"),
                    "network_interface_name": "lo",
                }
            )
        )
        input_config = {}
        for channel in job.get("InputDataConfig") or []:
            channel_name = channel["ChannelName"]
            source = channel["DataSource"]["S3DataSource"]
            input_config[channel_name] = {
                "TrainingInputMode": channel.get("InputMode")
                or (job.get("AlgorithmSpecification") or {}).get("TrainingInputMode", "File"),
                "S3DistributionType": source.get("S3DataDistributionType", "FullyReplicated"),
                "RecordWrapperType": channel.get("RecordWrapperType", "None"),
            }
            if channel.get("ContentType"):
                input_config[channel_name]["ContentType"] = channel["ContentType"]
            destination = opt_ml / "input" / "data" / channel_name
            destination.mkdir(parents=True, exist_ok=True)
            count = s3io.download_prefix(
                self._s3, source["S3Uri"], destination, field=f"InputDataConfig.{channel_name}"
            )
            if count == 0:
                raise JobError(
                    f"Data download failed: No S3 objects found under S3 URL "
                    f'"{source["S3Uri"]}" given in input data source. Please ensure that the '
                    "bucket exists in the selected region, that objects exist under that S3 "
                    "prefix, and that the role has permission to read them."
                )
        (config_dir / "inputdataconfig.json").write_text(json.dumps(input_config, indent=2))

    def _train(
        self,
        name: str,
        job: dict[str, Any],
        run: _Run,
        command: list[str],
        opt_ml: Path,
        checkpoint_sync: s3io.FolderSync | None,
    ) -> int:
        env = dict(os.environ)
        env.update(self._settings.process_env)
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.update({k: str(v) for k, v in (job.get("Environment") or {}).items()})
        env.update(self._settings.device_env())
        env["EASEL_OPT_ML"] = str(opt_ml)
        env["TRAINING_JOB_NAME"] = name
        process = ManagedProcess(
            command, env=env, log_path=self.log_path(name), cwd=opt_ml, registry=self._registry
        )
        run.process = process
        max_runtime = (job.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds")
        started = time.monotonic()
        last_sync = started
        while process.poll() is None:
            if run.stop_requested.wait(0.2):
                process.terminate(grace_seconds=self._settings.stop_grace_s)
                break
            if max_runtime and time.monotonic() - started > float(max_runtime):
                self.request_stop(name, secondary="MaxRuntimeExceeded")
                continue
            if checkpoint_sync and time.monotonic() - last_sync >= (
                self._settings.checkpoint_sync_interval_s
            ):
                last_sync = time.monotonic()
                try:
                    checkpoint_sync.sync()
                except Exception:  # noqa: BLE001 - a failed sync is retried on the next round
                    log.exception("checkpoint sync of %s failed", name)
        exit_code = process.wait()
        process.terminate(grace_seconds=1)  # members of its group that outlived it
        return int(exit_code if exit_code is not None else -9)

    def _upload_results(
        self, job: dict[str, Any], opt_ml: Path, checkpoint_sync: s3io.FolderSync | None
    ) -> str | None:
        """Final checkpoint sync and model.tar.gz upload; an error message or None."""
        try:
            if checkpoint_sync is not None:
                checkpoint_sync.sync()
            bucket, key = s3io.parse_s3_uri(
                self._artifact_uri(job), field="OutputDataConfig.S3OutputPath"
            )
            self._s3.put_object(
                Bucket=bucket,
                Key=key,
                Body=s3io.pack_tar_gz(opt_ml / "model"),
                ContentType="application/x-gzip",
            )
        except Exception as exc:  # noqa: BLE001 - reported as the job's failure
            log.exception("upload of results of %s failed", job["TrainingJobName"])
            return f"Uploading the results failed: {exc}"
        return None

    @staticmethod
    def _artifact_uri(job: dict[str, Any]) -> str:
        return s3io.join_s3(
            job["OutputDataConfig"]["S3OutputPath"],
            job["TrainingJobName"],
            "output",
            "model.tar.gz",
        )

    def _failure_reason(self, name: str, exit_code: int) -> str:
        failure = self.opt_ml(name) / FAILURE_FILE
        if failure.is_file():
            text = failure_reason(failure.read_text(encoding="utf-8", errors="replace"))
            if text:
                return text
        reason = (
            f"AlgorithmError: the training process exited with code {exit_code}. "
            f"Log tail: {log_tail(self.log_path(name), max_chars=600)}"
        )
        return reason[:FAILURE_REASON_MAX]

    # --- status bookkeeping

    def _set_status(self, name: str, status: str | None, secondary: str, message: str) -> None:
        job = self._records.get("training-job", name)
        if job is None:
            return
        if job.get("TrainingJobStatus") == "Stopping" and status == "InProgress":
            status = None  # a stop request wins over progress reports
            secondary = job["SecondaryStatus"]
        timestamp = now()
        transitions = list(job.get("SecondaryStatusTransitions") or [])
        if not transitions or transitions[-1]["Status"] != secondary:
            if transitions:
                transitions[-1]["EndTime"] = timestamp
            transitions.append(
                {"Status": secondary, "StartTime": timestamp, "StatusMessage": message}
            )
        changes: dict[str, Any] = {
            "SecondaryStatus": secondary,
            "SecondaryStatusTransitions": transitions,
            "LastModifiedTime": timestamp,
        }
        if status is not None:
            changes["TrainingJobStatus"] = status
        self._records.update("training-job", name, **changes)

    def _finish(
        self,
        name: str,
        status: str,
        secondary: str,
        *,
        failure: str | None = None,
        artifacts: bool = False,
    ) -> None:
        messages = {
            "Completed": "Training job completed",
            "Failed": "Training job failed",
            "Stopped": "Training job stopped",
            "MaxRuntimeExceeded": "Training job stopped: it exceeded the maximum run time",
        }
        self._set_status(name, None, secondary, messages.get(secondary, secondary))
        job = self._records.get("training-job", name)
        if job is None:
            return
        ended = now()
        transitions = job.get("SecondaryStatusTransitions") or []
        if transitions:
            transitions[-1]["EndTime"] = ended
        started = job.get("TrainingStartTime")
        seconds = int(ended - started) if started else 0
        changes: dict[str, Any] = {
            "TrainingJobStatus": status,
            "SecondaryStatus": secondary,
            "SecondaryStatusTransitions": transitions,
            "TrainingEndTime": ended,
            "LastModifiedTime": ended,
            "TrainingTimeInSeconds": seconds,
            "BillableTimeInSeconds": seconds,
        }
        if failure:
            changes["FailureReason"] = failure[:FAILURE_REASON_MAX]
        if artifacts:
            changes["ModelArtifacts"] = {"S3ModelArtifacts": self._artifact_uri(job)}
        self._records.update("training-job", name, **changes)
        with self._lock:
            self._runs.pop(name, None)
