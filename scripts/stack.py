"""Find the deployment a command works on: stack name, region, config and the stack's outputs.

Resolution order (first wins):
- stack name: `--stack`, then `EASEL_STACK`, then the config's `deployment_id` (the stage comes
  from `--stage`, then `EASEL_STAGE`, then cdk.json's `stage` context, then `default`);
- region: `--region`, then `AWS_REGION` / `AWS_DEFAULT_REGION`, then the config's `region`, then
  the AWS CLI profile's region.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

from scripts.cli import ScriptError, UsageError
from stacks.config import ConfigError, EaselConfig, load_config

REPO_ROOT = Path(__file__).resolve().parent.parent
CDK_JSON = REPO_ROOT / "cdk.json"


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("deployment")
    group.add_argument("--stack", help="CloudFormation stack name (default: EASEL_STACK, "
                       "else the config's deployment_id)")
    group.add_argument("--region", help="AWS region (default: AWS_REGION, else the config's "
                       "region, else your AWS profile's)")
    group.add_argument("--stage", help="config stage: config/<stage>.yaml over default.yaml "
                       "(default: EASEL_STAGE, else cdk.json's stage)")


def _context_stage() -> str | None:
    try:
        context = json.loads(CDK_JSON.read_text(encoding="utf-8")).get("context", {})
    except (OSError, ValueError):
        return None
    stage = context.get("stage")
    return stage if isinstance(stage, str) and stage else None


@dataclass(frozen=True)
class Target:
    """One deployment: where its stack lives and the config it was deployed with."""

    stack_name: str
    region: str
    stage: str
    config: EaselConfig

    @property
    def deployment_id(self) -> str:
        return self.config.deployment_id

    @cached_property
    def _session(self) -> boto3.Session:
        return boto3.Session(region_name=self.region)

    def session(self) -> boto3.Session:
        """One boto3 session per target: service models are loaded once."""
        return self._session

    def client(self, service: str) -> Any:
        return self._session.client(service)


def load_stage_config(stage: str, *, config_dir: Path | None = None) -> EaselConfig:
    try:
        return load_config(stage, config_dir=config_dir)
    except ConfigError as exc:
        raise UsageError(f"configuration: {exc}") from None


def resolve_target(
    args: argparse.Namespace,
    *,
    environ: Mapping[str, str] | None = None,
    config_dir: Path | None = None,
) -> Target:
    env = os.environ if environ is None else environ
    stage = getattr(args, "stage", None) or env.get("EASEL_STAGE") or _context_stage() or "default"
    config = load_stage_config(stage, config_dir=config_dir)
    stack_name = getattr(args, "stack", None) or env.get("EASEL_STACK") or config.deployment_id
    region = (
        getattr(args, "region", None)
        or env.get("AWS_REGION")
        or env.get("AWS_DEFAULT_REGION")
        or config.region
        or boto3.Session().region_name
    )
    if not region:
        raise UsageError(
            "no AWS region: pass --region, set AWS_REGION, or set `region:` in config/"
            f"{stage}.yaml"
        )
    return Target(stack_name=stack_name, region=region, stage=stage, config=config)


class StackOutputs:
    """The stack's outputs, looked up once; a missing stack or output says how to fix it."""

    def __init__(self, target: Target, *, cloudformation: Any = None) -> None:
        self.target = target
        self._cloudformation = cloudformation

    @cached_property
    def values(self) -> dict[str, str]:
        client = self._cloudformation or self.target.client("cloudformation")
        name, region = self.target.stack_name, self.target.region
        try:
            stacks = client.describe_stacks(StackName=name)["Stacks"]
        except ClientError as exc:
            error = exc.response.get("Error", {})
            if error.get("Code") == "ValidationError" and "does not exist" in error.get(
                "Message", ""
            ):
                raise ScriptError(
                    f"stack {name!r} was not found in region {region}. Deploy it first "
                    "(`make deploy`), or point at the right one with --stack NAME / EASEL_STACK "
                    "and --region REGION / AWS_REGION (or the config's deployment_id and region)."
                ) from None
            raise
        stack = stacks[0]
        status = stack.get("StackStatus", "")
        if status.startswith("DELETE") or status in ("ROLLBACK_COMPLETE", "CREATE_FAILED"):
            raise ScriptError(
                f"stack {name!r} in {region} is {status}; deploy it again with `make deploy`."
            )
        return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}

    def get(self, key: str) -> str | None:
        return self.values.get(key)

    def require(self, key: str) -> str:
        value = self.values.get(key)
        if not value:
            raise ScriptError(
                f"stack {self.target.stack_name!r} in {self.target.region} has no output "
                f"{key!r}: is it an Easel stack, and up to date? Run `make deploy` to update it."
            )
        return value
