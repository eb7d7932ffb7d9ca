"""The SageMaker execution role: every statement must be on the allowlist below.

Each entry: (actions the statement may contain, resource pattern, why). A statement whose
actions or resources are not covered fails the test, so a broadened role cannot slip in.
"""

from __future__ import annotations

import fnmatch
import json

BUCKET = "<DATA_BUCKET>"
PARTITION = "<P>"

ALLOWLIST = [
    (
        {"s3:GetObject*", "s3:GetBucket*", "s3:List*"},
        [f"{BUCKET}", *(f"{BUCKET}/{p}" for p in
                        ("models/*", "loras/*", "concepts/*", "training/*", "async/in/*",
                         "compile-cache/*"))],
        "read models, LoRAs, concepts, training output, async inputs and compile artifacts",
    ),
    (
        {"s3:PutObject", "s3:PutObjectLegalHold", "s3:PutObjectRetention", "s3:PutObjectTagging",
         "s3:PutObjectVersionTagging", "s3:Abort*"},
        [f"{BUCKET}/training/*", f"{BUCKET}/async/out/*", f"{BUCKET}/compile-cache/*"],
        "write training output, async results and the endpoints' compile artifacts",
    ),
    (
        {"ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"},
        ["<REPO:Inference>", "<REPO:Training>", "<REPO:Webui>"],
        "pull the kit's images",
    ),
    ({"ecr:GetAuthorizationToken"}, ["*"], "ECR login has no resource scope"),
    (
        {"logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents",
         "logs:DescribeLogStreams"},
        [
            "arn:<P>:logs:<R>:<A>:log-group:/aws/sagemaker/Endpoints/easel-*",
            "arn:<P>:logs:<R>:<A>:log-group:/aws/sagemaker/Endpoints/easel-*:log-stream:*",
            "arn:<P>:logs:<R>:<A>:log-group:/aws/sagemaker/TrainingJobs",
            "arn:<P>:logs:<R>:<A>:log-group:/aws/sagemaker/TrainingJobs:log-stream:easel-*",
        ],
        "its own endpoint and training log streams",
    ),
    ({"cloudwatch:PutMetricData"}, ["*"], "metrics; limited by a namespace condition"),
    (
        {"sagemaker:AddTags"},
        [f"arn:<P>:sagemaker:<R>:<A>:{kind}/easel-*"
         for kind in ("endpoint", "endpoint-config", "model", "training-job")],
        "tag resources named for this deployment",
    ),
]


def render(value, names):
    """Turn CloudFormation intrinsics into comparable strings."""
    if isinstance(value, str):
        return value
    if "Fn::Join" in value:
        return "".join(render(part, names) for part in value["Fn::Join"][1])
    if "Fn::GetAtt" in value:
        return names.get(value["Fn::GetAtt"][0], f"<{value['Fn::GetAtt'][0]}>")
    if "Ref" in value:
        return {"AWS::Partition": "<P>", "AWS::Region": "<R>", "AWS::AccountId": "<A>"}.get(
            value["Ref"], f"<Ref:{value['Ref']}>"
        )
    raise AssertionError(f"unexpected intrinsic {json.dumps(value)}")


def role_statements(synth):
    role_id, _ = synth.only("AWS::IAM::Role", path_contains="/SageMakerAccess/Role/")
    names = {}
    for logical_id, resource in synth.template["Resources"].items():
        path = resource.get("Metadata", {}).get("aws:cdk:path", "")
        if "/Storage/Data/Resource" in path:
            names[logical_id] = BUCKET
        for repo in ("Inference", "Training", "Webui"):
            if f"/Registries/{repo}/Resource" in path:
                names[logical_id] = f"<REPO:{repo}>"
    statements = []
    for resource in synth.resources("AWS::IAM::Policy").values():
        if {"Ref": role_id} in resource["Properties"]["Roles"]:
            statements += resource["Properties"]["PolicyDocument"]["Statement"]
    return role_id, [
        {
            **s,
            "Action": [s["Action"]] if isinstance(s["Action"], str) else s["Action"],
            "Resource": [
                render(r, names)
                for r in (s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]])
            ],
        }
        for s in statements
    ]


def test_role_is_assumed_only_by_sagemaker(synth):
    _, role = synth.only("AWS::IAM::Role", path_contains="/SageMakerAccess/Role/")
    (statement,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "sagemaker.amazonaws.com"}
    assert "ManagedPolicyArns" not in role["Properties"]


def test_every_statement_is_on_the_allowlist(synth):
    _, statements = role_statements(synth)
    assert statements
    for statement in statements:
        assert statement["Effect"] == "Allow"
        for resource in statement["Resource"]:
            matches = [
                entry for entry in ALLOWLIST
                if set(statement["Action"]) <= entry[0] and resource in entry[1]
            ]
            assert matches, f"not on the allowlist: {statement['Action']} on {resource}"


def test_role_can_read_every_prefix_the_architecture_lists(synth):
    _, statements = role_statements(synth)
    readable = {
        r for s in statements if "s3:GetObject*" in s["Action"] for r in s["Resource"]
    }
    for prefix in ("models/*", "loras/*", "concepts/*", "training/*", "async/in/*"):
        assert f"{BUCKET}/{prefix}" in readable
    assert f"{BUCKET}/outputs/*" not in readable


def test_role_writes_only_training_async_output_and_compile_artifacts(synth):
    _, statements = role_statements(synth)
    writable = {r for s in statements if "s3:PutObject" in s["Action"] for r in s["Resource"]}
    assert writable == {f"{BUCKET}/training/*", f"{BUCKET}/async/out/*",
                        f"{BUCKET}/compile-cache/*"}
    assert not any(fnmatch.filter(s["Action"], "s3:Delete*") for s in statements)


def test_metrics_are_limited_by_namespace(synth):
    _, statements = role_statements(synth)
    (metrics,) = [s for s in statements if "cloudwatch:PutMetricData" in s["Action"]]
    assert metrics["Condition"]["StringLike"]["cloudwatch:namespace"]
