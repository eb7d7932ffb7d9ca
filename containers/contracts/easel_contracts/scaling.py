"""An endpoint's scaling plan and its outcome, kept on the endpoint's table record.

The portal builds the plan when it deploys an endpoint and stores it, as JSON, on the endpoint's
record (``PLAN_ATTRIBUTE``). When SageMaker reports the endpoint InService, the stack's scaler
Lambda (``stacks/scaling_handler``; the local SageMaker stand-in calls the same code) reads the
plan, applies it with Application Auto Scaling (and CloudWatch, for async endpoints) and writes
the outcome back (``STATUS_ATTRIBUTE``, ``ERROR_ATTRIBUTE``), which the Endpoints page shows.

The plan holds the boto3 request arguments as they are sent, so the Lambda (which has boto3 but
not pydantic) applies it without rebuilding anything.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PLAN_ATTRIBUTE = "scaling_plan"
STATUS_ATTRIBUTE = "scaling_status"
ERROR_ATTRIBUTE = "scaling_error"

ScalingStatus = Literal["pending", "applied", "failed"]
PENDING: ScalingStatus = "pending"
APPLIED: ScalingStatus = "applied"
FAILED: ScalingStatus = "failed"

SERVICE_NAMESPACE = "sagemaker"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"


class AlarmRequest(BaseModel):
    """A CloudWatch PutMetricAlarm request whose action is the ARN of a policy of the plan (known
    only once PutScalingPolicy answers)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy_name: str = Field(min_length=1)
    request: dict[str, Any]


class ScalingPlan(BaseModel):
    """RegisterScalableTarget, then PutScalingPolicy for each policy, then PutMetricAlarm."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint_name: str = Field(min_length=1, max_length=63)
    scalable_target: dict[str, Any]
    policies: list[dict[str, Any]]
    alarms: list[AlarmRequest] = Field(default_factory=list)

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> ScalingPlan:
        return cls.model_validate_json(text)
