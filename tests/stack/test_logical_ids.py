"""Pinned logical IDs of stateful resources.

CloudFormation replaces (deletes and re-creates) a resource whose logical ID changes. For these
resources that would lose data or secrets, so a refactor that moves them must keep their IDs
(e.g. with `override_logical_id`). Update this list only with a migration plan.
"""

from __future__ import annotations

PINNED = {
    "StorageData6BB23F4E": "AWS::S3::Bucket",
    "StorageAccessLogs96FB524C": "AWS::S3::Bucket",
    "StateTable962DE04C": "AWS::DynamoDB::Table",
    "SecretsAdminPasswordA3C880B6": "AWS::SecretsManager::Secret",
    "SecretsSessionKeyBDCFDE07": "AWS::SecretsManager::Secret",
    "RegistriesInferenceB86BE30C": "AWS::ECR::Repository",
    "RegistriesTraining5BB592E8": "AWS::ECR::Repository",
    "RegistriesWebui246DDDFB": "AWS::ECR::Repository",
}


def test_stateful_resources_keep_their_logical_ids(synth):
    resources = synth.template["Resources"]
    actual = {
        logical_id: r["Type"] for logical_id, r in resources.items()
        if r["Type"] in set(PINNED.values())
    }
    assert actual == PINNED
