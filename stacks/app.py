"""Builds the CDK app from config: the one stack, tags set once, cdk-nag attached.

Makes no AWS calls: synth works with no credentials.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from easel_contracts.naming import DEPLOYMENT_TAG, PROJECT_TAG
from stacks.config import EaselConfig, load_config
from stacks.easel_stack import EaselStack

CDK_JSON = Path(__file__).resolve().parent.parent / "cdk.json"


def cdk_json_context() -> dict[str, Any]:
    return json.loads(CDK_JSON.read_text(encoding="utf-8")).get("context", {})


def stack_name(config: EaselConfig) -> str:
    return config.deployment_id


def build_app(
    *,
    stage: str | None = None,
    config: EaselConfig | None = None,
    outdir: str | Path | None = None,
    nag: bool = True,
) -> tuple[cdk.App, EaselStack]:
    # cdk.json's feature flags apply however the app is built (CLI or tests); path metadata (as
    # the CLI adds) maps resources to constructs for reviewers and tests.
    context = {**cdk_json_context(), "aws:cdk:enable-path-metadata": True}
    app = cdk.App(outdir=str(outdir) if outdir else None, context=context)
    if config is None:
        config = load_config(stage or app.node.try_get_context("stage") or "default")
    env = None
    if config.account or config.region:
        env = cdk.Environment(account=config.account, region=config.region)
    stack = EaselStack(
        app,
        "Easel",
        config=config,
        stack_name=stack_name(config),
        env=env,
        description="Easel: a Stable Diffusion studio in your AWS account",
    )
    cdk.Tags.of(app).add(DEPLOYMENT_TAG, config.deployment_id)
    cdk.Tags.of(app).add(PROJECT_TAG, "easel")
    if nag:
        cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app, stack
