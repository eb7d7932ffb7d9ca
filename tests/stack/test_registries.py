"""ECR repositories: scanned, never expiring tagged images, removed with the stack."""

from __future__ import annotations

import json

from stacks.registries import IMAGE_NAMES


def repositories(synth):
    return synth.resources("AWS::ECR::Repository")


def test_one_repository_per_image(synth):
    paths = sorted(r["Metadata"]["aws:cdk:path"] for r in repositories(synth).values())
    assert len(paths) == len(IMAGE_NAMES)
    for name in IMAGE_NAMES:
        assert any(f"/Registries/{name.capitalize()}/" in p for p in paths)


def test_repositories_scan_on_push(synth):
    for repo in repositories(synth).values():
        assert repo["Properties"]["ImageScanningConfiguration"] == {"ScanOnPush": True}


def test_lifecycle_only_expires_untagged_images(synth):
    for repo in repositories(synth).values():
        policy = json.loads(repo["Properties"]["LifecyclePolicy"]["LifecyclePolicyText"])
        assert policy["rules"], "a lifecycle rule is expected"
        for rule in policy["rules"]:
            assert rule["selection"]["tagStatus"] == "untagged", rule
            assert rule["action"]["type"] == "expire"


def test_repositories_are_emptied_and_removed_on_destroy(synth):
    for repo in repositories(synth).values():
        assert repo["DeletionPolicy"] == "Delete"
        assert repo["Properties"]["EmptyOnDelete"] is True
