"""DynamoDB table settings and the stack's outputs."""

from __future__ import annotations


def test_table_has_generic_keys_and_a_gsi(synth):
    _, table = synth.only("AWS::DynamoDB::Table")
    props = table["Properties"]
    assert props["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    assert {"AttributeName": "pk", "AttributeType": "S"} in props["AttributeDefinitions"]
    assert {"AttributeName": "sk", "AttributeType": "S"} in props["AttributeDefinitions"]
    (gsi,) = props["GlobalSecondaryIndexes"]
    assert [k["AttributeName"] for k in gsi["KeySchema"]] == ["gsi1pk", "gsi1sk"]


def test_table_is_on_demand_encrypted_with_pitr(synth):
    _, table = synth.only("AWS::DynamoDB::Table")
    props = table["Properties"]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["SSESpecification"]["SSEEnabled"] is True
    assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert props["TimeToLiveSpecification"] == {"AttributeName": "ttl", "Enabled": True}
    assert table["DeletionPolicy"] == "Retain"


def test_outputs_name_bucket_secret_and_region(synth):
    outputs = synth.template["Outputs"]
    assert {"BucketName", "AdminSecretName", "Region"} <= set(outputs)
    assert outputs["Region"]["Value"] == {"Ref": "AWS::Region"}


def test_every_taggable_resource_carries_the_deployment_tag(synth):
    tagged = 0
    for logical_id, resource in synth.template["Resources"].items():
        tags = resource.get("Properties", {}).get("Tags")
        if isinstance(tags, list):
            keys = {t["Key"]: t["Value"] for t in tags}
            assert keys.get("easel:deployment") == "easel", logical_id
            tagged += 1
    assert tagged >= 8


def test_no_fixed_physical_names(synth):
    name_keys = ("BucketName", "RepositoryName", "TableName", "RoleName", "FunctionName", "Name")
    for logical_id, resource in synth.template["Resources"].items():
        if resource["Type"].startswith("Custom::"):
            continue
        props = resource.get("Properties", {})
        for key in name_keys:
            assert not isinstance(props.get(key), str), f"{logical_id} sets a fixed {key}"
