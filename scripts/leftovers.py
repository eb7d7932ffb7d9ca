"""List everything a deployment left in the account, with what running endpoints cost per hour.

    python -m scripts.leftovers            # list
    python -m scripts.leftovers --delete   # also delete the SageMaker ones (asks first; --yes)

A resource belongs to the deployment when it carries the tag `easel:deployment=<deployment_id>`,
or, untagged, when its name starts with `<deployment_id>-`. A resource tagged for another
deployment is never listed, even when its name shares the prefix (e.g. `easel-dev-...`). Useful
before and after `cdk destroy`: the stack's cleanup removes what the portal created; this finds
anything that escaped it, and what a destroy keeps on purpose (the data bucket, the table and the
log groups unless `purge_data: true`): SageMaker endpoints, endpoint configs, models and training
jobs, endpoint scaling targets and alarms, buckets, tables, repositories, log groups (the
stack's, the endpoints' and Lambda's `/aws/lambda/<deployment_id>-...`) and the training jobs'
log streams in SageMaker's shared `/aws/sagemaker/TrainingJobs` group. Only the SageMaker
resources (with their scaling) are deleted here; the rest are listed, to delete by hand.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from easel_contracts.naming import DEPLOYMENT_TAG, resource_prefix
from scripts.cli import ScriptError, confirm, run_main
from scripts.stack import REPO_ROOT, Target, add_target_arguments, resolve_target

SAGEMAKER_KINDS = ("endpoint", "endpoint-config", "model", "training-job")
RUNNING_TRAINING = ("InProgress", "Stopping")
TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"


@dataclass
class Resource:
    kind: str
    name: str
    status: str = ""
    detail: str = ""
    hourly_usd: float | None = None

    @property
    def deletable(self) -> bool:
        return self.kind in SAGEMAKER_KINDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.leftovers",
        description="List the resources a deployment left behind (and delete the SageMaker ones).",
    )
    parser.add_argument("--delete", action="store_true",
                        help="delete endpoints, endpoint configs and models, stop training jobs")
    parser.add_argument("--yes", action="store_true", help="do not ask before deleting")
    add_target_arguments(parser)
    return parser


def price_source(config_path: Path | None = None) -> str:
    """The comment above the price table in config/default.yaml (where the prices come from)."""
    path = config_path or REPO_ROOT / "config" / "default.yaml"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return "unknown"
    for index, line in enumerate(lines):
        if line.lstrip().startswith("#") and "price" in line.lower():
            block = [line.strip().lstrip("#").strip()]
            for follow in lines[index + 1:]:
                if not follow.lstrip().startswith("#"):
                    break
                block.append(follow.strip().lstrip("#").strip())
            return " ".join(block)
    return "unknown (no price comment in config/default.yaml)"


def _tag_value(tags: Iterable[dict[str, str]]) -> str | None:
    for tag in tags:
        if tag.get("Key", tag.get("key")) == DEPLOYMENT_TAG:
            return tag.get("Value", tag.get("value"))
    return None


class Finder:
    def __init__(self, target: Target, client: Callable[[str], Any]) -> None:
        self.deployment_id = target.deployment_id
        self.prefix = resource_prefix(target.deployment_id)
        self.config = target.config
        self.client = client

    def belongs(self, name: str, tag: str | None) -> bool:
        if tag is not None:
            return tag == self.deployment_id
        return name.startswith(self.prefix)

    def hourly_price(self, instance_type: str) -> float | None:
        for table in (self.config.endpoints.instance_types, self.config.training.instance_types):
            if instance_type in table:
                return table[instance_type].hourly_usd
        return None

    # --- SageMaker

    def _sagemaker_tag(self, arn: str) -> str | None:
        try:
            tags = self.client("sagemaker").list_tags(ResourceArn=arn).get("Tags", [])
        except ClientError:
            return None
        return _tag_value(tags)

    def _listed(self, operation: str, key: str, name_key: str, arn_key: str) -> list[dict]:
        sagemaker = self.client("sagemaker")
        found = []
        for page in sagemaker.get_paginator(operation).paginate(NameContains=self.deployment_id):
            for item in page.get(key, []):
                if not item[name_key].startswith(self.prefix):
                    tag = self._sagemaker_tag(item[arn_key])
                    if tag != self.deployment_id:
                        continue
                elif not self.belongs(item[name_key], self._sagemaker_tag(item[arn_key])):
                    continue
                found.append(item)
        return found

    def endpoints(self) -> list[Resource]:
        sagemaker = self.client("sagemaker")
        result = []
        for item in self._listed("list_endpoints", "Endpoints", "EndpointName", "EndpointArn"):
            name = item["EndpointName"]
            status = item.get("EndpointStatus", "")
            described = sagemaker.describe_endpoint(EndpointName=name)
            counts = {v["VariantName"]: v.get("CurrentInstanceCount", 0)
                      for v in described.get("ProductionVariants", [])}
            types: dict[str, str] = {}
            try:
                config = sagemaker.describe_endpoint_config(
                    EndpointConfigName=described["EndpointConfigName"])
                types = {v["VariantName"]: v.get("InstanceType", "?")
                         for v in config.get("ProductionVariants", [])}
            except ClientError:
                pass
            hourly: float | None = 0.0
            details = []
            for variant, instance_type in types.items():
                count = counts.get(variant, 0)
                details.append(f"{count} x {instance_type}")
                price = self.hourly_price(instance_type)
                if price is None:
                    hourly = None
                elif hourly is not None:
                    hourly += price * count
            result.append(Resource("endpoint", name, status, ", ".join(details), hourly))
        return result

    def endpoint_configs(self) -> list[Resource]:
        return [Resource("endpoint-config", i["EndpointConfigName"])
                for i in self._listed("list_endpoint_configs", "EndpointConfigs",
                                      "EndpointConfigName", "EndpointConfigArn")]

    def models(self) -> list[Resource]:
        return [Resource("model", i["ModelName"])
                for i in self._listed("list_models", "Models", "ModelName", "ModelArn")]

    def training_jobs(self) -> list[Resource]:
        return [Resource("training-job", i["TrainingJobName"], i.get("TrainingJobStatus", ""))
                for i in self._listed("list_training_jobs", "TrainingJobSummaries",
                                      "TrainingJobName", "TrainingJobArn")]

    # --- storage, registries, logs

    def buckets(self) -> list[Resource]:
        s3 = self.client("s3")
        result = []
        for bucket in s3.list_buckets().get("Buckets", []):
            name = bucket["Name"]
            try:
                tags = s3.get_bucket_tagging(Bucket=name).get("TagSet", [])
            except ClientError:
                tags = []
            if self.belongs(name, _tag_value(tags)):
                result.append(Resource("bucket", name, detail="retained data; delete by hand"))
        return result

    def repositories(self) -> list[Resource]:
        ecr = self.client("ecr")
        result = []
        for page in ecr.get_paginator("describe_repositories").paginate():
            for repo in page.get("repositories", []):
                name = repo["repositoryName"]
                try:
                    tags = ecr.list_tags_for_resource(
                        resourceArn=repo["repositoryArn"]).get("tags", [])
                except ClientError:
                    tags = []
                if self.belongs(name, _tag_value(tags)):
                    result.append(Resource("repository", name))
        return result

    def log_groups(self) -> list[Resource]:
        logs = self.client("logs")
        pattern = re.compile(rf"(^|/){re.escape(self.prefix)}")
        result = []
        for page in logs.get_paginator("describe_log_groups").paginate():
            for group in page.get("logGroups", []):
                name = group["logGroupName"]
                if self.deployment_id not in name:
                    continue
                try:
                    tags = logs.list_tags_log_group(logGroupName=name).get("tags", {})
                except ClientError:
                    tags = {}
                tag = tags.get(DEPLOYMENT_TAG)
                if (tag == self.deployment_id) or (tag is None and pattern.search(name)):
                    size = group.get("storedBytes", 0)
                    result.append(Resource("log-group", name, detail=f"{size} bytes stored"))
        return result

    def training_log_streams(self) -> list[Resource]:
        """Streams of this deployment's training jobs in SageMaker's shared training log group
        (the group itself is SageMaker's, never the deployment's)."""
        logs = self.client("logs")
        result = []
        for job in self._listed("list_training_jobs", "TrainingJobSummaries",
                                "TrainingJobName", "TrainingJobArn"):
            try:
                pages = list(logs.get_paginator("describe_log_streams").paginate(
                    logGroupName=TRAINING_LOG_GROUP,
                    logStreamNamePrefix=f"{job['TrainingJobName']}/"))
            except ClientError:
                return result  # no training job has logged in this region
            for page in pages:
                for stream in page.get("logStreams", []):
                    result.append(Resource(
                        "log-stream", f"{TRAINING_LOG_GROUP}:{stream['logStreamName']}",
                        detail=f"{stream.get('storedBytes', 0)} bytes stored"))
        return result

    def tables(self) -> list[Resource]:
        dynamodb = self.client("dynamodb")
        result = []
        for page in dynamodb.get_paginator("list_tables").paginate():
            for name in page.get("TableNames", []):
                if self.deployment_id not in name:
                    continue
                try:
                    arn = dynamodb.describe_table(TableName=name)["Table"]["TableArn"]
                    tags = dynamodb.list_tags_of_resource(ResourceArn=arn).get("Tags", [])
                except ClientError:
                    tags = []
                if self.belongs(name, _tag_value(tags)):
                    result.append(Resource("table", name,
                                           detail="retained data; re-attach with table_name"))
        return result

    def scaling_targets(self) -> list[Resource]:
        scaling = self.client("application-autoscaling")
        result = []
        for page in scaling.get_paginator("describe_scalable_targets").paginate(
            ServiceNamespace="sagemaker"
        ):
            for target in page.get("ScalableTargets", []):
                endpoint = target["ResourceId"].split("/")[1]
                if endpoint.startswith(self.prefix) and self.belongs(
                        endpoint, self._endpoint_tag(endpoint)):
                    result.append(Resource("scaling-target", target["ResourceId"]))
        return result

    def alarms(self) -> list[Resource]:
        cloudwatch = self.client("cloudwatch")
        result = []
        for page in cloudwatch.get_paginator("describe_alarms").paginate(
            AlarmNamePrefix=self.prefix
        ):
            for alarm in page.get("MetricAlarms", []):
                try:
                    tags = cloudwatch.list_tags_for_resource(
                        ResourceARN=alarm["AlarmArn"]).get("Tags", [])
                except ClientError:
                    tags = []
                if self.belongs(alarm["AlarmName"], _tag_value(tags)):
                    result.append(Resource("alarm", alarm["AlarmName"],
                                           alarm.get("StateValue", "")))
        return result

    def _endpoint_tag(self, name: str) -> str | None:
        """The deployment tag of an endpoint that still exists (None when it is gone)."""
        try:
            arn = self.client("sagemaker").describe_endpoint(EndpointName=name)["EndpointArn"]
        except ClientError:
            return None
        return self._sagemaker_tag(arn)

    def all(self) -> list[Resource]:
        found: list[Resource] = []
        for finder in (self.endpoints, self.endpoint_configs, self.models, self.training_jobs,
                       self.scaling_targets, self.alarms, self.buckets, self.tables,
                       self.repositories, self.log_groups, self.training_log_streams):
            found.extend(finder())
        return found


def delete(resources: Sequence[Resource], client: Callable[[str], Any],
           say: Callable[[str], None]) -> int:
    """Delete the SageMaker resources; returns how many could not be deleted."""
    sagemaker = client("sagemaker")
    failures = 0
    order = ("endpoint", "endpoint-config", "model", "training-job")
    for kind in order:
        for resource in (r for r in resources if r.kind == kind):
            try:
                if kind == "endpoint":
                    _deregister_scaling(client, resource.name)
                    sagemaker.delete_endpoint(EndpointName=resource.name)
                elif kind == "endpoint-config":
                    sagemaker.delete_endpoint_config(EndpointConfigName=resource.name)
                elif kind == "model":
                    sagemaker.delete_model(ModelName=resource.name)
                elif resource.status in RUNNING_TRAINING:
                    sagemaker.stop_training_job(TrainingJobName=resource.name)
                else:
                    continue  # finished training jobs cannot be deleted and cost nothing
                say(f"deleted {kind} {resource.name}" if kind != "training-job"
                    else f"stopped training job {resource.name}")
            except ClientError as exc:
                failures += 1
                error = exc.response.get("Error", {})
                say(f"could not delete {kind} {resource.name}: {error.get('Code')}: "
                    f"{error.get('Message', '')}")
    return failures


def _deregister_scaling(client: Callable[[str], Any], endpoint: str) -> None:
    scaling = client("application-autoscaling")
    try:
        targets = scaling.describe_scalable_targets(ServiceNamespace="sagemaker").get(
            "ScalableTargets", [])
    except ClientError:
        return
    for target in targets:
        if target["ResourceId"].startswith(f"endpoint/{endpoint}/"):
            scaling.deregister_scalable_target(
                ServiceNamespace="sagemaker", ResourceId=target["ResourceId"],
                ScalableDimension=target["ScalableDimension"])


def render(resources: Sequence[Resource], *, deployment_id: str, region: str) -> str:
    if not resources:
        return f"nothing left for deployment {deployment_id!r} in {region}"
    rows = [("KIND", "NAME", "STATUS", "DETAIL", "USD/HOUR")]
    for r in resources:
        cost = "" if r.kind != "endpoint" else ("?" if r.hourly_usd is None
                                                else f"{r.hourly_usd:.3f}")
        rows.append((r.kind, r.name, r.status, r.detail, cost))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
             for row in rows]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    target = resolve_target(args)
    session = target.session()
    clients: dict[str, Any] = {}

    def client(service: str) -> Any:
        if service not in clients:
            clients[service] = session.client(service)
        return clients[service]

    finder = Finder(target, client)
    resources = finder.all()
    print(f"deployment {target.deployment_id!r} in {target.region}:")
    print(render(resources, deployment_id=target.deployment_id, region=target.region))
    endpoints = [r for r in resources if r.kind == "endpoint"]
    if endpoints:
        known = sum(r.hourly_usd or 0 for r in endpoints)
        unknown = any(r.hourly_usd is None for r in endpoints)
        print(f"\nrunning endpoints cost about ${known:.2f}/hour"
              + (" plus types without a price in the config" if unknown else ""))
        print(f"prices: {price_source()}")
    if not args.delete:
        return 0
    deletable = [r for r in resources if r.deletable
                 and (r.kind != "training-job" or r.status in RUNNING_TRAINING)]
    if not deletable:
        print("nothing to delete (buckets, repositories and log groups are kept; delete them by "
              "hand if you mean to)", file=sys.stderr)
        return 0
    if not confirm(f"Delete {len(deletable)} SageMaker resource(s) listed above?",
                   assume_yes=args.yes):
        print("nothing deleted", file=sys.stderr)
        return 1
    failures = delete(deletable, client, lambda m: print(m, file=sys.stderr))
    if failures:
        raise ScriptError(f"{failures} resource(s) could not be deleted (see above); run again, "
                          "or delete them in the SageMaker console")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
