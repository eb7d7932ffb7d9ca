"""Data and access-log buckets: private, encrypted, TLS-only, versioned, lifecycle, retention."""

from __future__ import annotations

import json

import pytest

from stacks.config import load_config
from tests.stack.conftest import synthesize

BLOCK_ALL = {
    "BlockPublicAcls": True,
    "BlockPublicPolicy": True,
    "IgnorePublicAcls": True,
    "RestrictPublicBuckets": True,
}


def data_bucket(synth):
    return synth.only("AWS::S3::Bucket", path_contains="/Storage/Data/")


def log_bucket(synth):
    return synth.only("AWS::S3::Bucket", path_contains="/Storage/AccessLogs/")


def policy_for(synth, logical_id):
    for resource in synth.resources("AWS::S3::BucketPolicy").values():
        if resource["Properties"]["Bucket"] == {"Ref": logical_id}:
            return resource["Properties"]["PolicyDocument"]["Statement"]
    raise AssertionError(f"no bucket policy for {logical_id}")


def assert_tls_only(statements, logical_id):
    deny = [
        s for s in statements
        if s["Effect"] == "Deny" and s.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}
    ]
    assert deny, "no TLS-only deny statement"
    resources = str(deny[0]["Resource"])
    assert logical_id in resources and "/*" in resources
    assert deny[0]["Action"] == "s3:*"
    assert deny[0]["Principal"] == {"AWS": "*"}


@pytest.mark.parametrize("which", [data_bucket, log_bucket])
def test_buckets_block_public_access_and_encrypt(synth, which):
    _, bucket = which(synth)
    props = bucket["Properties"]
    assert props["PublicAccessBlockConfiguration"] == BLOCK_ALL
    rule = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")


@pytest.mark.parametrize("which", [data_bucket, log_bucket])
def test_buckets_have_tls_only_policy(synth, which):
    logical_id, _ = which(synth)
    assert_tls_only(policy_for(synth, logical_id), logical_id)


def test_data_bucket_versioned_with_expiring_old_versions(synth):
    props = data_bucket(synth)[1]["Properties"]
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    rules = props["LifecycleConfiguration"]["Rules"]
    expiry = [r for r in rules if "NoncurrentVersionExpiration" in r]
    assert expiry and expiry[0]["NoncurrentVersionExpiration"]["NoncurrentDays"] == 30
    assert all(r["Status"] == "Enabled" for r in rules)


def test_data_bucket_aborts_incomplete_uploads_after_a_week(synth):
    rules = data_bucket(synth)[1]["Properties"]["LifecycleConfiguration"]["Rules"]
    abort = [r for r in rules if "AbortIncompleteMultipartUpload" in r]
    assert abort[0]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}


def test_data_bucket_logs_to_log_bucket(synth):
    log_id, _ = log_bucket(synth)
    logging = data_bucket(synth)[1]["Properties"]["LoggingConfiguration"]
    assert logging["DestinationBucketName"] == {"Ref": log_id}


def test_data_is_retained_by_default(synth):
    _, bucket = data_bucket(synth)
    assert bucket["DeletionPolicy"] == "Retain"
    assert bucket["UpdateReplacePolicy"] == "Retain"
    assert not synth.resources("Custom::S3AutoDeleteObjects")


def variant_synth(tmp_path_factory, **overrides):
    config = load_config().model_copy(update=overrides)
    return synthesize(tmp_path_factory.mktemp("variant"), config=config, nag=False)


@pytest.fixture(scope="module")
def purged(tmp_path_factory):
    return variant_synth(tmp_path_factory, purge_data=True)


@pytest.fixture(scope="module")
def reattached(tmp_path_factory):
    return variant_synth(tmp_path_factory, data_bucket_name="easel-data-kept-123",
                         table_name="easel-StateTable962DE04C-KEPT")


def test_purge_data_deletes_bucket_and_table_with_the_stack(purged):
    _, bucket = data_bucket(purged)
    assert bucket["DeletionPolicy"] == "Delete"
    assert purged.resources("Custom::S3AutoDeleteObjects")
    _, table = purged.only("AWS::DynamoDB::Table")
    assert table["DeletionPolicy"] == "Delete"


def test_reattached_bucket_is_not_created_but_gets_tls_policy(reattached):
    buckets = reattached.resources("AWS::S3::Bucket")
    assert all("/Storage/Data/" not in b["Metadata"]["aws:cdk:path"] for b in buckets.values())
    policies = [
        p for p in reattached.resources("AWS::S3::BucketPolicy").values()
        if p["Properties"]["Bucket"] == "easel-data-kept-123"
    ]
    assert len(policies) == 1
    statement = policies[0]["Properties"]["PolicyDocument"]["Statement"][0]
    assert statement["Effect"] == "Deny"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert "easel-data-kept-123/*" in str(statement["Resource"])


@pytest.mark.parametrize("variant", ["synth", "purged", "reattached"])
def test_bucket_policies_are_never_deleted_on_their_own(variant, request):
    # Kept: the bucket keeps its TLS-only policy after `cdk destroy`. Purged: the deny-new-objects
    # statement CDK adds before emptying a bucket stays until S3 deletes the bucket (and its
    # policy), so late access logs cannot refill the log bucket and fail its delete.
    synth = request.getfixturevalue(variant)
    policies = synth.resources("AWS::S3::BucketPolicy")
    assert policies
    assert {p.get("DeletionPolicy") for p in policies.values()} == {"Retain"}


def test_purge_data_deletes_every_log_group_with_the_stack(purged):
    groups = purged.resources("AWS::Logs::LogGroup")
    assert groups
    assert {g["DeletionPolicy"] for g in groups.values()} == {"Delete"}


@pytest.mark.parametrize("variant", ["synth", "purged"])
def test_every_lambda_function_logs_to_a_log_group_of_the_stack(variant, request):
    # Otherwise Lambda creates /aws/lambda/<function> at run time, and nothing deletes it.
    synth = request.getfixturevalue(variant)
    groups = synth.resources("AWS::Logs::LogGroup")
    for logical_id, function in synth.resources("AWS::Lambda::Function").items():
        target = function["Properties"].get("LoggingConfig", {}).get("LogGroup")
        assert isinstance(target, dict) and target.get("Ref") in groups, logical_id


def test_reattached_table_is_not_created_and_the_portal_is_granted_it_and_its_index(reattached):
    assert not reattached.resources("AWS::DynamoDB::Table")
    name = "easel-StateTable962DE04C-KEPT"
    outputs = reattached.template["Outputs"]
    assert outputs["TableName"]["Value"] == name
    granted = [
        json.dumps(statement["Resource"])
        for policy in reattached.resources("AWS::IAM::Policy").values()
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        if "dynamodb:PutItem" in statement["Action"]
    ]
    assert any(f"table/{name}" in r and f"table/{name}/index/*" in r for r in granted)
