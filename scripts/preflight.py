"""Check an AWS account before the first `cdk deploy`; print a pass/fail table with fixes.

    python -m scripts.preflight [--stage STAGE] [--region REGION]

Checks: credentials, region, CDK bootstrap, the Availability Zones the portal's subnets will use
(by AZ ID, only zones with CloudFront VPC origins: `stacks/availability_zones.py`), SageMaker
quotas for the configured endpoint and training instance types, and CodeBuild's concurrent-build
quota for the image builds. Quotas are
only a proxy for GPU capacity: AWS has no API that says whether an instance is free right now, so
a deploy can still meet `InsufficientCapacity` with a quota of 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

from scripts.cli import run_main
from scripts.stack import Target, add_target_arguments, resolve_target
from stacks.availability_zones import VPC_ORIGIN_AZ_IDS, subnet_az_ids

PASS, WARN, FAIL = "pass", "warn", "FAIL"
BOOTSTRAP_PARAMETER = "/cdk-bootstrap/hnb659fds/version"
MIN_BOOTSTRAP_VERSION = 6  # CDK v2 templates refuse bootstrap versions 1-5
CODEBUILD_SIZES = {"small": "Small", "medium": "Medium", "large": "Large", "2xlarge": "2XLarge"}
PROXY_NOTE = ("Quotas are only a proxy for GPU capacity: no AWS API says whether an instance is "
              "free right now, so a deploy can still meet InsufficientCapacity.")


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.preflight",
        description="Check credentials, region, CDK bootstrap and quotas before deploying Easel.",
        epilog=PROXY_NOTE,
    )
    add_target_arguments(parser)
    return parser


def _list_quotas(client: Any, operation: str, service_code: str) -> dict[str, float]:
    values: dict[str, float] = {}
    kwargs: dict[str, Any] = {"ServiceCode": service_code}
    while True:
        try:
            answer = getattr(client, operation)(**kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchResourceException":
                return values
            raise
        for quota in answer.get("Quotas", []):
            values.setdefault(quota["QuotaName"], float(quota.get("Value", 0)))
        token = answer.get("NextToken")
        if not token:
            return values
        kwargs["NextToken"] = token


def quota_values(client: Any, service_code: str, wanted: set[str]) -> dict[str, float]:
    """Quota name -> applied value; AWS defaults fill in quotas that have no applied value."""
    values = _list_quotas(client, "list_service_quotas", service_code)
    if wanted - values.keys():
        for name, value in _list_quotas(client, "list_aws_default_service_quotas",
                                        service_code).items():
            values.setdefault(name, value)
    return values


def check_credentials(sts: Any, target: Target) -> tuple[Check, str | None]:
    try:
        identity = sts.get_caller_identity()
    except (NoCredentialsError, PartialCredentialsError):
        return Check("credentials", FAIL, "no AWS credentials found",
                     "run `aws configure` or `aws sso login`, or set AWS_PROFILE"), None
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        return Check("credentials", FAIL, f"rejected ({code})",
                     "refresh your credentials (`aws sso login`) and run again"), None
    account = identity["Account"]
    if target.config.account and target.config.account != account:
        return Check("credentials", FAIL,
                     f"account {account}, but config/{target.stage}.yaml says "
                     f"{target.config.account}",
                     "use credentials for the configured account, or change `account:`"), account
    return Check("credentials", PASS, f"{identity['Arn']} (account {account})"), account


def check_region(target: Target) -> Check:
    regions = boto3.Session().get_available_regions("sagemaker")
    if regions and target.region not in regions:
        return Check("region", FAIL, f"{target.region}: SageMaker is not offered there",
                     "pick a SageMaker region with --region / AWS_REGION / `region:`")
    if target.config.region and target.config.region != target.region:
        return Check("region", WARN,
                     f"{target.region}, but config/{target.stage}.yaml says {target.config.region}",
                     "the deploy goes to the config's region; align AWS_REGION with it")
    return Check("region", PASS, target.region)


def check_bootstrap(ssm: Any, cloudformation: Any, *, account: str | None,
                    region: str) -> Check:
    fix = f"run `npx cdk bootstrap aws://{account or 'ACCOUNT'}/{region}`"
    try:
        value = ssm.get_parameter(Name=BOOTSTRAP_PARAMETER)["Parameter"]["Value"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ParameterNotFound":
            return Check("CDK bootstrap", FAIL, f"cannot read {BOOTSTRAP_PARAMETER}", fix)
        try:
            cloudformation.describe_stacks(StackName="CDKToolkit")
        except ClientError:
            return Check("CDK bootstrap", FAIL, f"{region} is not bootstrapped", fix)
        return Check("CDK bootstrap", FAIL,
                     f"CDKToolkit exists but {BOOTSTRAP_PARAMETER} is missing "
                     "(custom qualifier or a broken bootstrap)", fix)
    try:
        version = int(value)
    except ValueError:
        return Check("CDK bootstrap", FAIL, f"unreadable bootstrap version {value!r}", fix)
    if version < MIN_BOOTSTRAP_VERSION:
        return Check("CDK bootstrap", FAIL, f"version {version} is too old", fix)
    return Check("CDK bootstrap", PASS, f"version {version}")


def subnet_zone_count(target: Target) -> int:
    """How many AZs the synthesized VPC spans: CDK gives a stack without a pinned account and
    region two Availability Zones, whatever `portal.max_azs` says."""
    config = target.config
    return config.portal.max_azs if config.account and config.region else min(
        config.portal.max_azs, 2)


def check_availability_zones(ec2: Any, target: Target) -> Check:
    name = "availability zones"
    count = subnet_zone_count(target)
    wanted = subnet_az_ids(target.region, count)
    if wanted is None:
        known = VPC_ORIGIN_AZ_IDS.get(target.region)
        if known is None:
            return Check(name, FAIL,
                         f"{target.region}: no list of zones with CloudFront VPC origins",
                         "deploy to a region listed in stacks/availability_zones.py, or add this "
                         "region's AZ IDs there (CloudFront Developer Guide: VPC origins)")
        return Check(name, FAIL,
                     f"{target.region} has {len(known)} zone(s) with CloudFront VPC origins, "
                     f"the VPC needs {count}",
                     f"set portal.max_azs to {len(known)} or less, or deploy to another region")
    try:
        zones = ec2.describe_availability_zones(
            Filters=[{"Name": "zone-type", "Values": ["availability-zone"]}]
        )["AvailabilityZones"]
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        return Check(name, WARN, f"cannot list Availability Zones ({code})",
                     "allow ec2:DescribeAvailabilityZones, or check the zones by hand")
    available = {z["ZoneId"]: z["ZoneName"] for z in zones if z.get("State") == "available"}
    missing = [zone for zone in wanted if zone not in available]
    if missing:
        return Check(name, FAIL,
                     f"the subnets go to {', '.join(wanted)}, but this account cannot use "
                     f"{', '.join(missing)}",
                     "reorder that region's AZ IDs in stacks/availability_zones.py (zones this "
                     "account has first), or deploy to another region")
    placed = ", ".join(f"{zone} ({available[zone]})" for zone in wanted)
    return Check(name, PASS, f"subnets in {placed}: CloudFront VPC origins offered")


def _quota_groups(target: Target) -> list[tuple[str, str, list[str]]]:
    groups = [
        ("endpoint", "for endpoint usage", list(target.config.endpoints.instance_types)),
        ("training", "for training job usage", list(target.config.training.instance_types)),
    ]
    if target.config.training.spot_by_default:
        groups.append(("spot training", "for spot training job usage",
                       list(target.config.training.instance_types)))
    return groups


def sagemaker_quota_names(target: Target) -> set[str]:
    return {f"{t} {suffix}" for _label, suffix, types in _quota_groups(target) for t in types}


def codebuild_quota_name(target: Target) -> str:
    size = CODEBUILD_SIZES[target.config.image_build.compute_type]
    return f"Concurrently running builds for Linux/{size} environment"


def check_sagemaker_quotas(quotas: dict[str, float], target: Target) -> list[Check]:
    checks: list[Check] = []
    for label, suffix, types in _quota_groups(target):
        rows = []
        for instance_type in types:
            name = f"{instance_type} {suffix}"
            value = quotas.get(name)
            if value is None:
                rows.append(Check(f"quota: {name}", WARN, "quota not found in Service Quotas",
                                  "check the SageMaker quotas in the Service Quotas console"))
            elif value < 1:
                rows.append(Check(f"quota: {name}", WARN, f"{value:g} instances",
                                  f"request an increase of '{name}' (Service Quotas > "
                                  "Amazon SageMaker), or drop the type from the config"))
            else:
                rows.append(Check(f"quota: {name}", PASS, f"{value:g} instance(s)"))
        if rows and not any(r.status == PASS for r in rows):
            rows = [Check(r.name, FAIL, r.detail, r.fix) if r.status == WARN else r
                    for r in rows]
            rows.append(Check(f"{label} instances", FAIL,
                              f"no configured {label} instance type has a quota above 0",
                              "request a quota increase for at least one of them"))
        checks.extend(rows)
    return checks


def check_codebuild_quota(quotas: dict[str, float], target: Target) -> Check:
    name = codebuild_quota_name(target)
    value = quotas.get(name)
    if value is None:
        return Check("quota: CodeBuild builds", WARN, f"'{name}' not found in Service Quotas",
                     "check CodeBuild's concurrent build quotas in the Service Quotas console")
    if value < 1:
        return Check("quota: CodeBuild builds", FAIL,
                     f"'{name}' is {value:g}: the image builds during `cdk deploy` cannot start",
                     f"request an increase of '{name}' (new accounts often start at 0), or set "
                     "image_build.compute_type to a size that has quota")
    return Check("quota: CodeBuild builds", PASS, f"{name}: {value:g}")


def run_checks(target: Target, client: Callable[[str], Any]) -> list[Check]:
    credentials, account = check_credentials(client("sts"), target)
    checks = [credentials, check_region(target)]
    if account is None:
        return checks
    checks.append(check_bootstrap(client("ssm"), client("cloudformation"), account=account,
                                  region=target.region))
    checks.append(check_availability_zones(client("ec2"), target))
    quotas_client = client("service-quotas")
    for service, wanted, make in (
        ("sagemaker", sagemaker_quota_names(target), lambda q: check_sagemaker_quotas(q, target)),
        ("codebuild", {codebuild_quota_name(target)},
         lambda q: [check_codebuild_quota(q, target)]),
    ):
        try:
            quotas = quota_values(quotas_client, service, wanted)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            checks.append(Check(f"quotas: {service}", WARN, f"cannot read quotas ({code})",
                                "allow servicequotas:ListServiceQuotas, or check by hand"))
            continue
        checks.extend(make(quotas))
    return checks


def render(checks: Sequence[Check]) -> str:
    rows = [("CHECK", "RESULT", "DETAIL")] + [(c.name, c.status, c.detail) for c in checks]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
             for row in rows]
    fixes = [f"  - {c.name}: {c.fix}" for c in checks if c.status != PASS and c.fix]
    if fixes:
        lines += ["", "to fix:", *fixes]
    return "\n".join(lines)


def make_client(target: Target, service: str) -> Any:
    return target.client(service)


def run(args: argparse.Namespace) -> int:
    target = resolve_target(args)
    clients: dict[str, Any] = {}

    def client(service: str) -> Any:
        if service not in clients:
            clients[service] = make_client(target, service)
        return clients[service]

    checks = run_checks(target, client)
    print(f"preflight for deployment {target.deployment_id!r} (stage {target.stage}) "
          f"in {target.region}:")
    print(render(checks))
    print(f"\n{PROXY_NOTE}")
    failed = [c for c in checks if c.status == FAIL]
    print(f"\n{'FAILED' if failed else 'OK'}: {len(failed)} failing check(s)")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
