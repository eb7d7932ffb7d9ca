"""Stopping the local AWS leaves no process and no port behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from urllib.parse import urlparse

import pytest
from local_helpers import (
    FAKES,
    clients_for,
    deploy,
    fake_settings,
    process_is_running,
    start_training_job,
    wait_for,
    wait_while,
)

from local.processes import port_is_open
from local.runtime import LocalAws, StateFolderError


def test_shutdown_ends_every_process_it_started(tmp_path, monkeypatch):
    aws = LocalAws(tmp_path, settings=fake_settings()).start()
    try:
        clients = clients_for(aws, monkeypatch)
        endpoint = deploy(clients, "running", environment={"FAKE_SPAWN_CHILD": "1"})
        reply = json.loads(
            clients.runtime.invoke_endpoint(EndpointName=endpoint, Body=b"{}")["Body"].read()
        )
        job = start_training_job(clients, "long", concepts={"1.png": b"p"}, steps=1000)
        pid_file = tmp_path / "sagemaker" / "training-jobs" / job / "opt_ml" / "pid"
        wait_for(pid_file.exists, timeout=30)
        ports = [urlparse(aws.emulator_url).port, urlparse(aws.sagemaker_url).port, reply["port"]]
        pids = [aws.emulator_pid, reply["pid"], reply["child_pid"], int(pid_file.read_text())]
        assert all(process_is_running(pid) for pid in pids)
    finally:
        aws.stop()

    assert [pid for pid in pids if process_is_running(pid)] == []
    assert [port for port in ports if port_is_open(port)] == []


def test_running_job_is_stopped_with_its_checkpoint_at_shutdown(tmp_path, monkeypatch):
    with LocalAws(tmp_path, settings=fake_settings()) as aws:
        clients = clients_for(aws, monkeypatch)
        job = start_training_job(clients, "interrupted", concepts={"1.png": b"p"}, steps=1000)
        # Once a step is synced the trainer is surely past its start-up (handler installed).
        wait_for(
            lambda: any(k.endswith("step-1.ckpt") for k in clients.keys(f"training/{job}/")),
            timeout=30,
        )

    with LocalAws(tmp_path, settings=fake_settings()) as aws:
        clients = clients_for(aws, monkeypatch)
        described = clients.sagemaker.describe_training_job(TrainingJobName=job)
        assert described["TrainingJobStatus"] == "Stopped"
        assert any("/stopped-" in key for key in clients.keys(f"training/{job}/checkpoints/"))


def test_processes_left_by_a_crash_are_ended_at_the_next_start(tmp_path, monkeypatch):
    crashed = subprocess.Popen(
        [sys.executable, str(FAKES / "run_until_killed.py"), str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(FAKES.parent)},  # finds local_helpers
    )
    try:
        pids = json.loads(crashed.stdout.readline())["pids"]
    finally:
        crashed.kill()  # SIGKILL: no chance to clean up
        crashed.wait()
    assert all(process_is_running(pid) for pid in pids)  # orphans now

    with LocalAws(tmp_path, settings=fake_settings()) as aws:
        assert [pid for pid in pids if process_is_running(pid)] == []
        clients = clients_for(aws, monkeypatch)
        status = wait_while(clients, "survivor", "Creating", interval=0.5)
        assert status["EndpointStatus"] == "InService", status.get("FailureReason", status)


def test_a_state_folder_serves_one_local_aws_at_a_time(tmp_path):
    with (
        LocalAws(tmp_path, settings=fake_settings()),
        pytest.raises(StateFolderError, match="in use"),
    ):
        LocalAws(tmp_path, settings=fake_settings()).start()


def test_a_job_training_when_the_runtime_is_killed_fails_with_the_reason_at_the_next_start(
        tmp_path, monkeypatch):
    crashed = subprocess.Popen(
        [sys.executable, str(FAKES / "run_until_killed.py"), str(tmp_path), "--train"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(FAKES.parent)},
    )
    try:
        printed = json.loads(crashed.stdout.readline())
    finally:
        crashed.kill()  # SIGKILL mid-training
        crashed.wait()
    trainer = printed["trainer_pid"]
    assert process_is_running(trainer)  # an orphan now, still training

    with LocalAws(tmp_path, settings=fake_settings()) as aws:
        assert not process_is_running(trainer)
        clients = clients_for(aws, monkeypatch)
        job = clients.sagemaker.describe_training_job(TrainingJobName=printed["job"])
        assert job["TrainingJobStatus"] == "Failed"
        assert "the local runtime stopped (killed or crashed)" in job["FailureReason"]
        assert f"training/{printed['job']}/checkpoints/" in job["FailureReason"]
        listed = clients.sagemaker.list_training_jobs(StatusEquals="InProgress")
        assert listed["TrainingJobSummaries"] == []
