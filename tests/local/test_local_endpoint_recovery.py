"""An endpoint whose server dies is replaced; deleting a busy endpoint answers at once."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time

import pytest
from botocore.exceptions import ClientError
from local_helpers import deploy, process_is_running, unique, wait_for

from local.sagemaker.http_server import StandInServer


def _echo(clients, name: str) -> dict:
    body = clients.runtime.invoke_endpoint(EndpointName=name, Body=b'{"task": "txt2img"}',
                                           ContentType="application/json")["Body"].read()
    return json.loads(body)


def _answers(clients, name: str) -> dict | None:
    try:
        return _echo(clients, name)
    except ClientError:
        return None


def _sleep_call(clients, name: str) -> None:
    with contextlib.suppress(ClientError):
        clients.runtime.invoke_endpoint(
            EndpointName=name, ContentType="application/json",
            Body=json.dumps({"task": "sleep", "payload": {"seconds": 20}}))


def test_a_killed_server_is_replaced_and_the_endpoint_stays_in_service(clients):
    name = deploy(clients, unique("heal"))
    old = _echo(clients, name)
    os.kill(old["pid"], signal.SIGKILL)

    replies: list[dict] = []
    wait_for(lambda: bool(replies.append(_answers(clients, name)) or replies[-1]), timeout=60)
    assert replies[-1]["pid"] != old["pid"]
    described = clients.sagemaker.describe_endpoint(EndpointName=name)
    assert described["EndpointStatus"] == "InService"


def test_calls_while_the_server_is_replaced_get_a_clear_503(clients):
    name = deploy(clients, unique("heal503"), environment={"FAKE_START_DELAY": "3"})
    os.kill(_echo(clients, name)["pid"], signal.SIGKILL)
    errors: list[ClientError] = []

    def refused() -> bool:
        try:
            _echo(clients, name)
        except ClientError as exc:
            errors.append(exc)
            return exc.response["Error"]["Code"] == "ServiceUnavailable"
        return False

    wait_for(refused, timeout=20)
    assert "being replaced" in errors[-1].response["Error"]["Message"]


def test_a_server_that_keeps_dying_fails_the_endpoint(clients):
    name = deploy(clients, unique("crashloop"))
    for _ in range(4):
        pid_box: list[dict] = []
        wait_for(lambda b=pid_box: bool(b.append(_answers(clients, name)) or b[-1]), timeout=60)
        os.kill(pid_box[-1]["pid"], signal.SIGKILL)
        time.sleep(1.5)
    wait_for(lambda: clients.sagemaker.describe_endpoint(EndpointName=name)["EndpointStatus"]
             == "Failed", timeout=30)
    reason = clients.sagemaker.describe_endpoint(EndpointName=name)["FailureReason"]
    assert "exited unexpectedly" in reason and "times in" in reason


def test_deleting_a_busy_endpoint_answers_at_once_and_ends_it(clients):
    name = deploy(clients, unique("busy"), environment={"FAKE_IGNORE_TERM": "1"})
    pid = _echo(clients, name)["pid"]
    busy = threading.Thread(target=_sleep_call, args=(clients, name), daemon=True)
    busy.start()  # the server sleeps in a request (never answered: it is deleted meanwhile)
    time.sleep(0.5)
    started = time.monotonic()
    clients.sagemaker.delete_endpoint(EndpointName=name)
    assert time.monotonic() - started < 5
    assert clients.sagemaker.describe_endpoint(EndpointName=name)["EndpointStatus"] == "Deleting"
    wait_for(lambda: not process_is_running(pid), timeout=60)


def test_a_client_that_left_is_logged_in_one_line_without_a_traceback(capsys, caplog):
    server = StandInServer.__new__(StandInServer)
    try:
        raise BrokenPipeError(32, "Broken pipe")
    except BrokenPipeError:
        server.handle_error(None, ("127.0.0.1", 5555))
    assert "Traceback" not in capsys.readouterr().err
    assert "closed the connection" in caplog.text


@pytest.fixture
def caplog(caplog):
    caplog.set_level("INFO", logger="local.sagemaker.http_server")
    return caplog
