"""A deploy's steps (download MB/s, unpack, load, warm-up) as the endpoint's status message,
in SageMaker's own field (ProductionVariants[].VariantStatus[].StatusMessage), while Creating."""

from __future__ import annotations

import time

from local_helpers import deploy, unique, wait_while

from local.sagemaker.endpoints import StepProgress


def variant_messages(described: dict) -> list[str]:
    return [status.get("StatusMessage", "")
            for variant in described.get("ProductionVariants") or []
            for status in variant.get("VariantStatus") or []]


def messages_until_in_service(clients, name: str, *, timeout: float = 60) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        described = clients.sagemaker.describe_endpoint(EndpointName=name)
        if described["EndpointStatus"] != "Creating":
            assert described["EndpointStatus"] == "InService", described.get("FailureReason")
            assert variant_messages(described) == []  # no progress once it serves
            return seen
        for status in (s for v in described.get("ProductionVariants") or []
                       for s in v.get("VariantStatus") or []):
            assert status["Status"] == "Creating"
            seen.append(status["StatusMessage"])
        time.sleep(0.1)
    raise AssertionError(f"still Creating after {timeout} s; saw {seen}")


def test_a_creating_endpoint_says_which_step_the_server_is_in(clients):
    name = deploy(clients, unique("progress"), wait=False,
                  environment={"FAKE_LOADING_SECONDS": "2", "FAKE_WARMING_SECONDS": "2"})
    seen = messages_until_in_service(clients, name)
    assert any(m.startswith("loading the model (") for m in seen), seen
    assert any(m.startswith("warming up: warming up fake (") for m in seen), seen
    loading = seen.index(next(m for m in seen if m.startswith("loading")))
    warming = seen.index(next(m for m in seen if m.startswith("warming")))
    assert loading < warming


def test_a_server_that_reports_failed_fails_the_endpoint_with_its_reason_at_once(clients):
    name = deploy(clients, unique("failed"), wait=False,
                  environment={"FAKE_FAILED_DETAIL": "no GPU: driver 535 found, 580 needed"})
    started = time.monotonic()
    described = wait_while(clients, name, "Creating", timeout=30)
    assert described["EndpointStatus"] == "Failed"
    assert "no GPU: driver 535 found, 580 needed" in described["FailureReason"]
    assert time.monotonic() - started < 30  # not the 60 s health-check timeout


def test_a_download_step_reads_as_megabytes_done_of_the_total_and_the_rate():
    lines: list[str] = []
    step = StepProgress("ep", "downloading s3://b/models/m/", total=2_000_000_000,
                        say=lambda *args: lines.append(args[0] % args[1:]))
    step(500_000_000)
    message = step.message()
    assert message.startswith("downloading s3://b/models/m/: 500 of 2,000 MB (25 %) at ")
    assert message.endswith(" MB/s")
    assert lines == ["endpoint ep: downloading s3://b/models/m/ (2,000 MB)..."]


def test_a_step_without_bytes_reads_as_its_name_detail_and_seconds():
    step = StepProgress("ep", "warming up", say=lambda *args: None)
    step.detail = "warming up sd15"
    assert step.message() == "warming up: warming up sd15 (0 s)"


def test_the_portal_reads_the_step_from_the_local_describe_endpoint(clients):
    from easel_webui.endpoints import variant_progress

    name = deploy(clients, unique("portal"), wait=False,
                  environment={"FAKE_LOADING_SECONDS": "3"})
    shown: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        described = clients.sagemaker.describe_endpoint(EndpointName=name)  # parsed by botocore
        if described["EndpointStatus"] != "Creating":
            break
        shown.append(variant_progress(described))
        time.sleep(0.1)
    assert any(text.startswith("loading the model (") for text in shown), shown
    assert variant_progress(clients.sagemaker.describe_endpoint(EndpointName=name)) == ""
