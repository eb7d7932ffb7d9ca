"""preflight: pass/fail table with a fix per failure; Service Quotas stubbed (moto lacks it)."""

from __future__ import annotations

import pytest
from botocore.stub import Stubber

from scripts import preflight
from scripts.preflight import BOOTSTRAP_PARAMETER
from scripts.stack import load_stage_config

# the allowlists of the config preflight reads (the default stage)
_CONFIG = load_stage_config("default")
ENDPOINT_TYPES = tuple(_CONFIG.endpoints.instance_types)
TRAINING_TYPES = tuple(_CONFIG.training.instance_types)
CODEBUILD_LARGE = "Concurrently running builds for Linux/Large environment"


def _quotas(values):
    return {"Quotas": [{"QuotaName": name, "Value": value, "QuotaCode": f"L-{i:08d}"}
                       for i, (name, value) in enumerate(values.items())]}


def _sagemaker_quotas(endpoint=1.0, training=1.0):
    values = {f"{t} for endpoint usage": endpoint for t in ENDPOINT_TYPES}
    values.update({f"{t} for training job usage": training for t in TRAINING_TYPES})
    return values


@pytest.fixture
def bootstrapped(aws):
    aws.client("ssm").put_parameter(Name=BOOTSTRAP_PARAMETER, Value="30", Type="String")
    return aws


def _run(capsys, monkeypatch, session, *, sagemaker, codebuild, codebuild_defaults=None):
    quotas = session.client("service-quotas")
    stubber = Stubber(quotas)
    stubber.add_response("list_service_quotas", _quotas(sagemaker), {"ServiceCode": "sagemaker"})
    stubber.add_response("list_service_quotas", _quotas(codebuild), {"ServiceCode": "codebuild"})
    if codebuild_defaults is not None:
        stubber.add_response("list_aws_default_service_quotas", _quotas(codebuild_defaults),
                             {"ServiceCode": "codebuild"})
    stubber.activate()

    def make_client(target, service):
        return quotas if service == "service-quotas" else session.client(service)

    monkeypatch.setattr(preflight, "make_client", make_client)
    code = preflight.main([])
    out, err = capsys.readouterr()
    return code, out, err


def _row(out, name):
    return next(line for line in out.splitlines() if line.startswith(name))


def test_ready_account_passes(bootstrapped, capsys, monkeypatch):
    code, out, err = _run(capsys, monkeypatch, bootstrapped, sagemaker=_sagemaker_quotas(),
                          codebuild={CODEBUILD_LARGE: 1.0})
    assert code == 0, out + err
    assert "pass" in _row(out, "credentials") and "123456789012" in out
    assert "version 30" in _row(out, "CDK bootstrap")
    assert "OK: 0 failing" in out
    assert "only a proxy for GPU capacity" in out


def test_codebuild_quota_of_zero_fails_with_the_fix(bootstrapped, capsys, monkeypatch):
    code, out, _ = _run(capsys, monkeypatch, bootstrapped, sagemaker=_sagemaker_quotas(),
                        codebuild={CODEBUILD_LARGE: 0.0})
    assert code == 1
    assert "FAIL" in _row(out, "quota: CodeBuild builds")
    assert f"request an increase of '{CODEBUILD_LARGE}'" in out


def test_quota_without_an_applied_value_is_read_from_the_aws_default(bootstrapped, capsys,
                                                                     monkeypatch):
    code, out, _ = _run(capsys, monkeypatch, bootstrapped, sagemaker=_sagemaker_quotas(),
                        codebuild={}, codebuild_defaults={CODEBUILD_LARGE: 0.0})
    assert code == 1
    assert "is 0: the image builds during `cdk deploy` cannot start" in out


def test_endpoint_quotas_all_zero_fail(bootstrapped, capsys, monkeypatch):
    code, out, _ = _run(capsys, monkeypatch, bootstrapped,
                        sagemaker=_sagemaker_quotas(endpoint=0.0),
                        codebuild={CODEBUILD_LARGE: 1.0})
    assert code == 1
    assert "FAIL" in _row(out, "quota: ml.g5.xlarge for endpoint usage")
    assert "no configured endpoint instance type has a quota above 0" in out
    assert "pass" in _row(out, "quota: ml.g5.2xlarge for training job usage")


def test_one_zero_quota_among_others_is_only_a_warning(bootstrapped, capsys, monkeypatch):
    values = _sagemaker_quotas()
    values["ml.g6e.xlarge for endpoint usage"] = 0.0
    code, out, _ = _run(capsys, monkeypatch, bootstrapped, sagemaker=values,
                        codebuild={CODEBUILD_LARGE: 2.0})
    assert code == 0
    assert "warn" in _row(out, "quota: ml.g6e.xlarge for endpoint usage")


def test_missing_bootstrap_fails_with_the_bootstrap_command(aws, capsys, monkeypatch):
    code, out, _ = _run(capsys, monkeypatch, aws, sagemaker=_sagemaker_quotas(),
                        codebuild={CODEBUILD_LARGE: 1.0})
    assert code == 1
    assert "FAIL" in _row(out, "CDK bootstrap")
    assert "npx cdk bootstrap aws://123456789012/us-east-1" in out


def test_account_other_than_the_configured_one_fails(bootstrapped, capsys, monkeypatch,
                                                     tmp_path):
    from stacks.config import CONFIG_DIR, load_config

    (tmp_path / "default.yaml").write_text((CONFIG_DIR / "default.yaml").read_text())
    (tmp_path / "prod.yaml").write_text('account: "210987654321"\n')
    monkeypatch.setattr("scripts.stack.load_config",
                        lambda stage, config_dir=None: load_config(stage, config_dir=tmp_path))
    monkeypatch.setenv("EASEL_STAGE", "prod")
    code, out, _ = _run(capsys, monkeypatch, bootstrapped, sagemaker=_sagemaker_quotas(),
                        codebuild={CODEBUILD_LARGE: 1.0})
    assert code == 1
    assert "config/prod.yaml says 210987654321" in _row(out, "credentials")


# --- Availability Zones: the subnets go by AZ ID to zones with CloudFront VPC origins


def _target(target_region, **config_changes):
    from scripts.stack import Target
    from stacks.config import load_config

    config = load_config()
    portal = config_changes.pop("portal", {})
    config = config.model_copy(update={
        **config_changes, "portal": config.portal.model_copy(update=portal)})
    return Target(stack_name="easel", region=target_region, stage="default", config=config)


def _zones(*zone_ids):
    return {"AvailabilityZones": [
        {"ZoneName": f"zone-{i}", "ZoneId": zone, "State": "available",
         "ZoneType": "availability-zone"} for i, zone in enumerate(zone_ids)]}


def _ec2_answering(session, answer):
    ec2 = session.client("ec2")
    stubber = Stubber(ec2)
    stubber.add_response("describe_availability_zones", answer)
    stubber.activate()
    return ec2


def test_ready_account_shows_the_zone_ids_the_subnets_use(bootstrapped, capsys, monkeypatch):
    code, out, _ = _run(capsys, monkeypatch, bootstrapped, sagemaker=_sagemaker_quotas(),
                        codebuild={CODEBUILD_LARGE: 1.0})
    row = _row(out, "availability zones")
    assert code == 0 and "pass" in row
    assert "use1-az1" in row and "use1-az3" not in row


def test_region_without_a_list_of_vpc_origin_zones_fails(aws):
    check = preflight.check_availability_zones(aws.client("ec2"), _target("me-south-1"))
    assert check.status == preflight.FAIL
    assert "stacks/availability_zones.py" in check.fix


def test_zone_the_account_cannot_use_fails_naming_it(aws):
    ec2 = _ec2_answering(aws, _zones("use1-az1", "use1-az3", "use1-az4"))
    check = preflight.check_availability_zones(ec2, _target("us-east-1"))
    assert check.status == preflight.FAIL
    assert "cannot use use1-az2" in check.detail


def test_more_zones_than_the_region_offers_fails_with_the_max_azs_fix(aws):
    target = _target("us-west-1", account="123456789012", region="us-west-1",
                     portal={"max_azs": 3, "nat_gateways": 1})
    check = preflight.check_availability_zones(aws.client("ec2"), target)
    assert check.status == preflight.FAIL
    assert "portal.max_azs to 2" in check.fix
