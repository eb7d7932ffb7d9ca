"""IAM call audit: every AWS call a component makes must be allowed by its principal's policies
in the synthesized template.

Three parts:
- `Recorder` records, with botocore's `provide-client-params` event, every call made by a boto3
  client created while it is active (operation, parameters, region), for one principal.
- `required_rights` maps one call to the IAM rights it needs: the action (where the action's name
  differs from the operation's, e.g. ListObjectsV2 -> s3:ListBucket on the bucket), the resource
  ARN, the request's condition context, and the rights a service checks on the caller's behalf
  (iam:PassRole for a role handed to SageMaker; Application Auto Scaling's SageMaker and
  CloudWatch checks). An operation it does not know fails the audit: add it here, from the
  Service Authorization Reference (https://docs.aws.amazon.com/service-authorization/latest/reference/).
- `Policies` evaluates rights against a principal's statements in the template (Fn::Join,
  Fn::GetAtt and Ref resolved with a fixed fake account, region and partition), with wildcards,
  explicit Deny, and the condition operators the template uses.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import botocore.session

PARTITION = "aws"
REGION = "us-east-1"
ACCOUNT = "123456789012"
PSEUDO = {
    "AWS::Partition": PARTITION,
    "AWS::Region": REGION,
    "AWS::AccountId": ACCOUNT,
    "AWS::URLSuffix": "amazonaws.com",
    "AWS::StackName": "easel",
}
DEPLOYMENT_TAG = "easel:deployment"


# --- recording -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Call:
    principal: str
    service: str  # botocore service name (e.g. "sagemaker-runtime")
    operation: str  # API operation name (e.g. "InvokeEndpoint")
    params: dict[str, Any]
    region: str = REGION


@dataclass
class Recorder:
    """Records the calls of every botocore client created while `recording(principal)` is on."""

    calls: list[Call] = field(default_factory=list)
    principal: str | None = None

    def _hook(self, service: str, region: str) -> Callable[..., None]:
        def record(params: dict[str, Any], model: Any, **_: Any) -> None:
            if self.principal is not None:
                self.calls.append(Call(self.principal, service, model.name, dict(params),
                                       region or REGION))
        return record

    @contextmanager
    def recording(self, principal: str) -> Iterator[Recorder]:
        original = botocore.session.Session.create_client
        recorder = self

        def create_client(session: Any, service_name: str, *args: Any, **kwargs: Any) -> Any:
            client = original(session, service_name, *args, **kwargs)
            client.meta.events.register(
                f"provide-client-params.{client.meta.service_model.service_id.hyphenize()}",
                recorder._hook(service_name, client.meta.region_name),
            )
            return client

        botocore.session.Session.create_client = create_client  # type: ignore[method-assign]
        self.principal = principal
        try:
            yield self
        finally:
            self.principal = None
            botocore.session.Session.create_client = original  # type: ignore[method-assign]

    def presigned_posts(self, principal: str, bucket: str, keys: list[str]) -> None:
        """A pre-signed POST is not an API call: botocore builds it from a placeholder
        CreateBucket model (only `Bucket` in its params), and S3 checks the signer's
        s3:PutObject on the key when the browser posts the form. Replace each placeholder with
        the PutObject call S3 checks, so the audit holds the template to it."""
        placeholders = [c for c in self.calls if c.principal == principal and c.service == "s3"
                        and c.operation == "CreateBucket" and c.params == {"Bucket": bucket}]
        assert len(placeholders) == len(keys), (len(placeholders), keys)
        for call in placeholders:
            self.calls.remove(call)
        self.calls.extend(Call(principal, "s3", "PutObject", {"Bucket": bucket, "Key": key})
                          for key in keys)

    def add_fake_calls(self, principal: str, service: str,
                       calls: list[tuple[str, dict[str, Any]]]) -> None:
        """Calls a test fake recorded as (boto3 method name, kwargs) in place of a client."""
        model = botocore.session.get_session().get_service_model(service)
        by_method = {_snake(name): name for name in model.operation_names}
        for method, kwargs in calls:
            if method not in by_method:
                continue  # a fake's helper, not an API call
            self.calls.append(Call(principal, service, by_method[method], dict(kwargs)))


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


# --- calls -> rights -------------------------------------------------------------------------

@dataclass(frozen=True)
class Right:
    action: str
    resource: str
    context: tuple[tuple[str, tuple[str, ...]], ...] = ()
    why: str = ""

    def context_dict(self) -> dict[str, list[str]]:
        return {key: list(values) for key, values in self.context}


class UnmappedCall(LookupError):
    pass


def _arn(service: str, resource: str, *, region: str = REGION, account: str = ACCOUNT) -> str:
    return f"arn:{PARTITION}:{service}:{region}:{account}:{resource}"


def _s3(bucket: str, key: str | None = None) -> str:
    return f"arn:{PARTITION}:s3:::{bucket}" + (f"/{key}" if key is not None else "")


def _tags(params: dict[str, Any], key: str = "Tags") -> dict[str, str]:
    raw = params.get(key) or params.get(key.lower()) or {}
    if isinstance(raw, dict):
        return dict(raw)
    return {t.get("Key", t.get("key")): t.get("Value", t.get("value")) for t in raw}


def _ctx(**values: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    out = []
    for key, value in values.items():
        out.append((key.replace("__", ":").replace("_SLASH_", "/"),
                    tuple(value) if isinstance(value, list | tuple) else (str(value),)))
    return tuple(out)


def _request_tags(tags: dict[str, str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    pairs = [(f"aws:RequestTag/{k}", (v,)) for k, v in tags.items()]
    pairs.append(("aws:TagKeys", tuple(tags)))
    return tuple(pairs)


SAGEMAKER_KINDS = {
    "Endpoint": ("endpoint", "EndpointName"),
    "EndpointConfig": ("endpoint-config", "EndpointConfigName"),
    "Model": ("model", "ModelName"),
    "TrainingJob": ("training-job", "TrainingJobName"),
}
SAGEMAKER_LIST = {"ListEndpoints", "ListEndpointConfigs", "ListModels", "ListTrainingJobs"}
SCALING_DIMENSION = "sagemaker:variant:DesiredInstanceCount"


def _sagemaker(call: Call) -> list[Right]:
    op, p = call.operation, call.params
    action = f"sagemaker:{op}"
    if op in SAGEMAKER_LIST:
        return [Right(action, "*")]
    if op in ("ListTags", "AddTags", "DeleteTags"):
        return [Right(action, p["ResourceArn"])]
    for kind, (resource, key) in SAGEMAKER_KINDS.items():
        if op.endswith(kind) and key in p:
            arn = _arn("sagemaker", f"{resource}/{p[key].lower()}")
            context: list[tuple[str, tuple[str, ...]]] = []
            rights = []
            if op.startswith("Create"):
                context += list(_request_tags(_tags(p)))
                types = [v["InstanceType"] for v in p.get("ProductionVariants", [])
                         if "InstanceType" in v]
                if "ResourceConfig" in p:
                    types.append(p["ResourceConfig"]["InstanceType"])
                if types:
                    context.append(("sagemaker:InstanceTypes", tuple(types)))
                role = p.get("ExecutionRoleArn") or p.get("RoleArn")
                if role:
                    rights.append(Right("iam:PassRole", role,
                                        _ctx(iam__PassedToService="sagemaker.amazonaws.com"),
                                        why=f"{op} hands the role to SageMaker"))
                if p.get("Tags"):
                    rights.append(Right("sagemaker:AddTags", arn, tuple(_request_tags(_tags(p))),
                                        why=f"{op} with Tags"))
            return [Right(action, arn, tuple(context)), *rights]
    if op == "UpdateEndpointWeightsAndCapacities":
        return [Right(action, _arn("sagemaker", f"endpoint/{p['EndpointName'].lower()}"))]
    raise UnmappedCall(op)


# InvokeEndpointWithResponseStream has no IAM action of its own: "your IAM permissions must
# allow the sagemaker:InvokeEndpoint action" (SageMaker API Reference,
# https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_runtime_InvokeEndpointWithResponseStream.html)
RUNTIME_ACTIONS = {"InvokeEndpoint": "sagemaker:InvokeEndpoint",
                   "InvokeEndpointAsync": "sagemaker:InvokeEndpointAsync",
                   "InvokeEndpointWithResponseStream": "sagemaker:InvokeEndpoint"}


def _runtime(call: Call) -> list[Right]:
    if call.operation in RUNTIME_ACTIONS:
        name = call.params["EndpointName"].lower()
        return [Right(RUNTIME_ACTIONS[call.operation], _arn("sagemaker", f"endpoint/{name}"))]
    raise UnmappedCall(call.operation)


S3_OBJECT_ACTIONS = {
    "GetObject": "s3:GetObject", "HeadObject": "s3:GetObject", "PutObject": "s3:PutObject",
    "DeleteObject": "s3:DeleteObject", "CreateMultipartUpload": "s3:PutObject",
    "UploadPart": "s3:PutObject", "CompleteMultipartUpload": "s3:PutObject",
    "AbortMultipartUpload": "s3:AbortMultipartUpload", "GetObjectTagging": "s3:GetObjectTagging",
    "ListParts": "s3:ListMultipartUploadParts",
}
S3_BUCKET_ACTIONS = {
    "ListObjectsV2": "s3:ListBucket", "ListObjects": "s3:ListBucket", "HeadBucket": "s3:ListBucket",
    "ListObjectVersions": "s3:ListBucketVersions", "GetBucketLocation": "s3:GetBucketLocation",
    "ListMultipartUploads": "s3:ListBucketMultipartUploads",
    "GetBucketTagging": "s3:GetBucketTagging",
}


def _s3_rights(call: Call) -> list[Right]:
    op, p = call.operation, call.params
    if op in S3_OBJECT_ACTIONS:
        return [Right(S3_OBJECT_ACTIONS[op], _s3(p["Bucket"], p["Key"]))]
    if op in S3_BUCKET_ACTIONS:
        return [Right(S3_BUCKET_ACTIONS[op], _s3(p["Bucket"]))]
    if op == "DeleteObjects":
        return [Right("s3:DeleteObject", _s3(p["Bucket"], o["Key"]))
                for o in p["Delete"]["Objects"]]
    if op == "CopyObject":
        source = p["CopySource"]
        if isinstance(source, str):
            bucket, _, key = source.lstrip("/").partition("/")
        else:
            bucket, key = source["Bucket"], source["Key"]
        return [Right("s3:GetObject", _s3(bucket, key), why="CopyObject reads the source"),
                Right("s3:PutObject", _s3(p["Bucket"], p["Key"]))]
    if op == "ListBuckets":
        return [Right("s3:ListAllMyBuckets", "*")]
    raise UnmappedCall(op)


DYNAMODB_ITEM_OPS = ("GetItem", "PutItem", "UpdateItem", "DeleteItem", "Query", "Scan",
                     "DescribeTable", "ConditionCheckItem")
TRANSACT = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem",
            "ConditionCheck": "ConditionCheckItem", "Get": "GetItem"}


def _table(name: str, index: str | None = None) -> str:
    return _arn("dynamodb", f"table/{name}" + (f"/index/{index}" if index else ""))


def _dynamodb(call: Call) -> list[Right]:
    op, p = call.operation, call.params
    if op in DYNAMODB_ITEM_OPS:
        return [Right(f"dynamodb:{op}", _table(p["TableName"], p.get("IndexName")))]
    if op == "BatchGetItem":
        return [Right("dynamodb:BatchGetItem", _table(t)) for t in p["RequestItems"]]
    if op == "BatchWriteItem":
        return [Right("dynamodb:BatchWriteItem", _table(t)) for t in p["RequestItems"]]
    if op in ("TransactWriteItems", "TransactGetItems"):
        rights = []
        for item in p["TransactItems"]:
            for kind, body in item.items():
                rights.append(Right(f"dynamodb:{TRANSACT[kind]}", _table(body["TableName"])))
        return rights
    if op == "ListTables":
        return [Right("dynamodb:ListTables", "*")]
    if op == "ListTagsOfResource":
        return [Right("dynamodb:ListTagsOfResource", p["ResourceArn"])]
    raise UnmappedCall(op)


def _secret(secret_id: str) -> str:
    if secret_id.startswith("arn:"):
        return secret_id
    # A name: the ARN ends with a random 6-character suffix.
    return _arn("secretsmanager", f"secret:{secret_id}-AbCdEf")


def _secretsmanager(call: Call) -> list[Right]:
    op, p = call.operation, call.params
    if op == "GetRandomPassword":
        return [Right("secretsmanager:GetRandomPassword", "*")]
    if "SecretId" in p:
        return [Right(f"secretsmanager:{op}", _secret(p["SecretId"]))]
    raise UnmappedCall(op)


def _log_group(name: str) -> str:
    # IAM policies name a log group by its ARN with the trailing ":*"
    # (https://docs.aws.amazon.com/AmazonCloudWatch/latest/logs/iam-access-control-overview-cwl.html).
    return _arn("logs", f"log-group:{name}:*")


def _logs(call: Call) -> list[Right]:
    op, p = call.operation, call.params
    if op == "DescribeLogGroups":
        # It names no group; AWS authorizes it on this pseudo-ARN (log-group:* matches it).
        return [Right("logs:DescribeLogGroups", _arn("logs", "log-group::log-stream:"))]
    if op == "CreateLogGroup":
        tags = _tags(p, "tags")
        rights = [Right("logs:CreateLogGroup", _log_group(p["logGroupName"]),
                        _request_tags(tags) if tags else ())]
        if tags:
            rights.append(Right("logs:TagResource", _log_group(p["logGroupName"]),
                                _request_tags(tags), why="CreateLogGroup with tags"))
        return rights
    if op in ("DeleteLogGroup", "PutRetentionPolicy", "DescribeLogStreams", "FilterLogEvents",
              "CreateLogStream"):
        return [Right(f"logs:{op}", _log_group(p["logGroupName"]))]
    if op in ("GetLogEvents", "DeleteLogStream", "PutLogEvents"):
        stream = f"log-group:{p['logGroupName']}:log-stream:{p['logStreamName']}"
        return [Right(f"logs:{op}", _arn("logs", stream))]
    if op in ("ListTagsForResource", "TagResource"):
        arn = p["resourceArn"].removesuffix(":*")
        return [Right(f"logs:{op}", arn + ":*" if ":log-group:" in arn else arn)]
    raise UnmappedCall(op)


def _alarm(name: str) -> str:
    return _arn("cloudwatch", f"alarm:{name}")


def _cloudwatch(call: Call) -> list[Right]:
    op, p = call.operation, call.params
    if op in ("GetMetricData", "PutMetricData", "GetMetricStatistics", "ListMetrics"):
        return [Right(f"cloudwatch:{op}", "*")]
    if op == "DescribeAlarms":
        prefix = p.get("AlarmNamePrefix")
        names = p.get("AlarmNames") or ([f"{prefix}*"] if prefix else ["*"])
        return [Right("cloudwatch:DescribeAlarms", _alarm(n)) for n in names]
    if op == "DeleteAlarms":
        return [Right("cloudwatch:DeleteAlarms", _alarm(n)) for n in p["AlarmNames"]]
    if op == "PutMetricAlarm":
        tags = _tags(p)
        return [Right("cloudwatch:PutMetricAlarm", _alarm(p["AlarmName"]),
                      _request_tags(tags) if tags else ())]
    if op == "ListTagsForResource":
        return [Right("cloudwatch:ListTagsForResource", p["ResourceARN"])]
    raise UnmappedCall(op)


def _endpoint_of(resource_id: str) -> str:
    return resource_id.split("/")[1]


def scalable_target_arn(resource_id: str) -> str:
    """The audit's stand-in for a scalable target's ARN. AWS gives each target a random id
    (`scalable-target/<id>`), so grants on targets cannot name them and are scoped by the
    `aws:ResourceTag`/`aws:RequestTag` conditions instead; the audit derives a stable id from the
    resource id, so the tags a scenario gives a target can be looked up by this ARN."""
    digest = hashlib.sha256(resource_id.encode()).hexdigest()[:32]
    return _arn("application-autoscaling", f"scalable-target/{digest}")


AUTOSCALING_SLR = (f"arn:{PARTITION}:iam::{ACCOUNT}:role/aws-service-role/"
                   "sagemaker.application-autoscaling.amazonaws.com/"
                   "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint")


def _autoscaling(call: Call) -> list[Right]:
    op, p = call.operation, call.params
    action = f"application-autoscaling:{op}"
    if op.startswith("Describe"):
        # Describe actions support no resource-level permissions (Service Authorization
        # Reference, Application Auto Scaling): they are authorized on "*".
        return [Right(action, "*")]
    if p.get("ServiceNamespace") != "sagemaker" or "ResourceId" not in p:
        raise UnmappedCall(op)
    target = scalable_target_arn(p["ResourceId"])
    endpoint = _arn("sagemaker", f"endpoint/{_endpoint_of(p['ResourceId']).lower()}")
    config = _arn("sagemaker", f"endpoint-config/{_endpoint_of(p['ResourceId']).lower()}")
    # Target tracking names its alarms TargetTracking-<resource id>-AlarmHigh|AlarmLow-<uuid>.
    alarm = _alarm(f"TargetTracking-{p['ResourceId']}-AlarmHigh-0a1b2c3d")
    # Application Auto Scaling checks these rights of the caller on its behalf
    # (https://docs.aws.amazon.com/autoscaling/application/userguide/security_iam_id-based-policy-examples.html).
    if op == "RegisterScalableTarget":
        tags = _tags(p)
        context = _request_tags(tags) if tags else ()
        rights = [
            Right(action, target, context),
            Right("sagemaker:DescribeEndpoint", endpoint, why="checked by RegisterScalableTarget"),
            Right("sagemaker:DescribeEndpointConfig", config,
                  why="checked by RegisterScalableTarget"),
            Right("sagemaker:UpdateEndpointWeightsAndCapacities", endpoint,
                  why="checked by RegisterScalableTarget"),
            Right("cloudwatch:DescribeAlarms", alarm, why="checked by RegisterScalableTarget"),
            # The first registration creates the service-linked role
            # (https://docs.aws.amazon.com/autoscaling/application/userguide/application-auto-scaling-service-linked-roles.html).
            Right("iam:CreateServiceLinkedRole", AUTOSCALING_SLR,
                  _ctx(iam__AWSServiceName="sagemaker.application-autoscaling.amazonaws.com"),
                  why="RegisterScalableTarget creates the service-linked role"),
        ]
        if tags:
            rights.append(Right("application-autoscaling:TagResource", target, context,
                                why="RegisterScalableTarget with Tags"))
        return rights
    rights = [Right(action, target)]
    if op == "PutScalingPolicy":
        if p.get("PolicyType") == "TargetTrackingScaling":  # step scaling creates no alarms
            rights += [
                Right("cloudwatch:PutMetricAlarm", alarm, why="checked by PutScalingPolicy"),
                Right("cloudwatch:DescribeAlarms", alarm, why="checked by PutScalingPolicy"),
            ]
    elif op in ("DeregisterScalableTarget", "DeleteScalingPolicy"):
        rights += [
            Right("cloudwatch:DeleteAlarms", alarm, why=f"checked by {op}"),
            Right("cloudwatch:DescribeAlarms", alarm, why=f"checked by {op}"),
        ]
    else:
        raise UnmappedCall(op)
    return rights


def _codebuild(call: Call) -> list[Right]:
    op, p = call.operation, call.params
    if op in ("StartBuild", "ListBuildsForProject"):
        return [Right(f"codebuild:{op}", _arn("codebuild", f"project/{p['projectName']}"))]
    if op == "BatchGetProjects":
        return [Right("codebuild:BatchGetProjects", _arn("codebuild", f"project/{name}"))
                for name in p["names"]]
    if op == "BatchGetBuilds":
        # Authorized on the project each build (id "<project>:<uuid>") belongs to.
        return [Right("codebuild:BatchGetBuilds",
                      _arn("codebuild", f"project/{build.split(':')[0]}")) for build in p["ids"]]
    raise UnmappedCall(op)


def _ecr(call: Call) -> list[Right]:
    op, p = call.operation, call.params
    if op in ("DescribeImages", "BatchGetImage", "ListImages", "DescribeRepositories"):
        if "repositoryName" in p:
            return [Right(f"ecr:{op}", _arn("ecr", f"repository/{p['repositoryName']}"))]
        return [Right(f"ecr:{op}", "*")]
    raise UnmappedCall(op)


MAPPERS: dict[str, Callable[[Call], list[Right]]] = {
    "codebuild": _codebuild,
    "ecr": _ecr,
    "sagemaker": _sagemaker,
    "sagemaker-runtime": _runtime,
    "s3": _s3_rights,
    "dynamodb": _dynamodb,
    "secretsmanager": _secretsmanager,
    "logs": _logs,
    "cloudwatch": _cloudwatch,
    "application-autoscaling": _autoscaling,
}


def required_rights(call: Call) -> list[Right]:
    mapper = MAPPERS.get(call.service)
    if mapper is None:
        raise UnmappedCall(f"{call.service}:{call.operation}")
    return mapper(call)


# --- the template's policies -----------------------------------------------------------------

class Unresolved(str):
    """A template value the audit cannot resolve; it matches nothing."""


def resolve(value: Any, template: dict[str, Any], names: dict[str, str]) -> Any:
    """Resolve Ref/Fn::GetAtt/Fn::Join/Fn::Select/Fn::Split with fixed pseudo parameters;
    `names` gives the physical name (Ref) of resources whose names the calls use."""
    if isinstance(value, list):
        return [resolve(v, template, names) for v in value]
    if not isinstance(value, dict):
        return value
    if "Ref" in value:
        ref = value["Ref"]
        if ref in PSEUDO:
            return PSEUDO[ref]
        return names.get(ref, Unresolved(f"<Ref {ref}>"))
    if "Fn::GetAtt" in value:
        logical, attribute = value["Fn::GetAtt"]
        return names.get(f"{logical}.{attribute}", Unresolved(f"<GetAtt {logical}.{attribute}>"))
    if "Fn::Join" in value:
        sep, parts = value["Fn::Join"]
        resolved = [resolve(p, template, names) for p in parts]
        if any(isinstance(p, Unresolved) for p in resolved):
            return Unresolved(sep.join(str(p) for p in resolved))
        return sep.join(resolved)
    if "Fn::Select" in value:
        index, items = value["Fn::Select"]
        return resolve(items, template, names)[int(index)]
    if "Fn::Split" in value:
        sep, text = value["Fn::Split"]
        return resolve(text, template, names).split(sep)
    return {k: resolve(v, template, names) for k, v in value.items()}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _glob(pattern: str, value: str) -> bool:
    if isinstance(pattern, Unresolved):
        return False
    return fnmatch.fnmatchcase(value, pattern)


def _condition_holds(operator: str, key: str, expected: Any, context: dict[str, list[str]]) -> bool:
    expected_values = [str(e).lower() if isinstance(e, bool) else str(e)
                       for e in _as_list(expected)]
    present = context.get(key)
    if operator == "Null":
        is_null = present is None or present == []
        return (expected_values[0].lower() == "true") == is_null
    if_exists = operator.endswith("IfExists")
    operator = operator.removesuffix("IfExists")
    qualifier, _, base = operator.rpartition(":")
    if present is None:
        # A missing key fails every operator but ...IfExists and ForAllValues (vacuous truth).
        return if_exists or qualifier == "ForAllValues"
    compare: Callable[[str, str], bool]
    if base in ("StringEquals", "ArnEquals", "Bool"):
        compare = lambda want, got: want == got  # noqa: E731
    elif base in ("StringLike", "ArnLike"):
        compare = lambda want, got: _glob(want, got)  # noqa: E731
    elif base == "StringEqualsIgnoreCase":
        compare = lambda want, got: want.lower() == got.lower()  # noqa: E731
    elif base in ("StringNotEquals", "StringNotLike", "ArnNotEquals", "ArnNotLike"):
        positive = "StringEquals" if base in ("StringNotEquals", "ArnNotEquals") else "StringLike"
        return not _condition_holds(f"{qualifier + ':' if qualifier else ''}{positive}", key,
                                    expected, context)
    else:
        raise NotImplementedError(f"condition operator {operator} is not evaluated by the audit")
    matches = [any(compare(want, got) for want in expected_values) for got in present]
    if qualifier == "ForAllValues":
        return all(matches)
    return any(matches)  # single-valued keys, and ForAnyValue


def _conditions_hold(conditions: dict[str, Any], context: dict[str, list[str]]) -> bool:
    for operator, pairs in conditions.items():
        for key, expected in pairs.items():
            if not _condition_holds(operator, key, expected, context):
                return False
    return True


@dataclass
class Statement:
    effect: str
    actions: list[str]
    resources: list[str]
    conditions: dict[str, Any]
    sid: str = ""

    def applies(self, right: Right, context: dict[str, list[str]]) -> bool:
        action_ok = any(fnmatch.fnmatchcase(right.action.lower(), a.lower())
                        for a in self.actions)
        resource_ok = any(_glob(r, right.resource) for r in self.resources)
        return action_ok and resource_ok and _conditions_hold(self.conditions, context)


# Managed policies the template attaches by ARN, as their documents grant.
MANAGED = {
    "service-role/AWSLambdaBasicExecutionRole": [
        Statement("Allow", ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                  ["*"], {}),
    ],
}


@dataclass
class Policies:
    statements: list[Statement]

    @classmethod
    def of_role(cls, template: dict[str, Any], role: str, names: dict[str, str]) -> Policies:
        resources = template["Resources"]
        documents = []
        role_resource = resources[role]
        for inline in role_resource["Properties"].get("Policies", []):
            documents.append(inline["PolicyDocument"])
        statements: list[Statement] = []
        for arn in role_resource["Properties"].get("ManagedPolicyArns", []):
            text = resolve(arn, template, names)
            for suffix, managed in MANAGED.items():
                if str(text).endswith(suffix):
                    statements.extend(managed)
        for resource in resources.values():
            if resource["Type"] not in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
                continue
            roles = resource["Properties"].get("Roles", [])
            if {"Ref": role} in roles:
                documents.append(resource["Properties"]["PolicyDocument"])
        for document in documents:
            for raw in _as_list(document["Statement"]):
                statements.append(Statement(
                    raw["Effect"],
                    _as_list(raw["Action"]),
                    [str(r) if not isinstance(r, Unresolved) else r
                     for r in _as_list(resolve(raw.get("Resource", "*"), template, names))],
                    resolve(raw.get("Condition", {}), template, names),
                    raw.get("Sid", ""),
                ))
        return cls(statements)

    def allows(self, right: Right, context: dict[str, list[str]]) -> bool:
        if any(s.effect == "Deny" and s.applies(right, context) for s in self.statements):
            return False
        return any(s.effect == "Allow" and s.applies(right, context) for s in self.statements)


def request_context(right: Right, resource_tags: Callable[[str], dict[str, str]]
                    ) -> dict[str, list[str]]:
    context = {"aws:SecureTransport": ["true"], **right.context_dict()}
    for key, value in resource_tags(right.resource).items():
        context[f"aws:ResourceTag/{key}"] = [value]
    return context


def deployment_tags(deployment_id: str, tagged: dict[str, dict[str, str]] | None = None
                    ) -> Callable[[str], dict[str, str]]:
    """Tags of the resources the calls touch: those given in `tagged` (by ARN), else the kit's
    rule (a SageMaker resource named `<deployment_id>-...` carries the deployment tag). Scalable
    targets have no name to go by: their tags must be given (see `created_tags`), else they
    carry none."""
    known = dict(tagged or {})

    def lookup(arn: str) -> dict[str, str]:
        if arn in known:
            return known[arn]
        name = arn.rsplit("/", 1)[-1]
        if ":sagemaker:" in arn and name.startswith(f"{deployment_id}-"):
            return {DEPLOYMENT_TAG: deployment_id}
        return {}

    return lookup


def created_tags(calls: list[Call]) -> dict[str, dict[str, str]]:
    """Tags, by ARN, of the scalable targets the calls registered with Tags."""
    return {scalable_target_arn(c.params["ResourceId"]): _tags(c.params) for c in calls
            if c.operation == "RegisterScalableTarget" and c.params.get("Tags")}


@dataclass(frozen=True)
class Finding:
    call: Call
    right: Right | None
    problem: str

    def __str__(self) -> str:
        if self.right is None:
            return f"{self.call.principal}: {self.call.service} {self.call.operation}: {self.problem}"
        why = f" ({self.right.why})" if self.right.why else ""
        return (f"{self.call.principal}: {self.call.service} {self.call.operation} needs "
                f"{self.right.action} on {self.right.resource}{why}: {self.problem}")


def audit(calls: list[Call], policies: dict[str, Policies],
          resource_tags: Callable[[str], dict[str, str]]) -> list[Finding]:
    findings = []
    for call in calls:
        try:
            rights = required_rights(call)
        except UnmappedCall as error:
            findings.append(Finding(call, None, f"unmapped operation {error} (add it to "
                                                "tests/stack/iam_audit.py)"))
            continue
        for right in rights:
            if not policies[call.principal].allows(right, request_context(right, resource_tags)):
                findings.append(Finding(call, right, "not allowed by the template"))
    return findings
