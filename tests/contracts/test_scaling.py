"""The scaling-plan contract: what the portal stores is what the scaler reads."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from easel_contracts import scaling


def _plan() -> scaling.ScalingPlan:
    return scaling.ScalingPlan(
        endpoint_name="easel-demo",
        scalable_target={"ResourceId": "endpoint/easel-demo/variant/AllTraffic"},
        policies=[{"PolicyName": "easel-demo-wake"}],
        alarms=[scaling.AlarmRequest(policy_name="easel-demo-wake",
                                     request={"AlarmName": "easel-demo-backlog"})],
    )


def test_plan_round_trips_through_its_json():
    plan = _plan()
    assert scaling.ScalingPlan.from_json(plan.to_json()) == plan


def test_json_is_the_plain_shape_the_lambda_reads():
    stored = json.loads(_plan().to_json())
    assert stored["alarms"][0] == {"policy_name": "easel-demo-wake",
                                   "request": {"AlarmName": "easel-demo-backlog"}}
    assert stored["policies"][0]["PolicyName"] == "easel-demo-wake"


def test_unknown_fields_are_refused():
    with pytest.raises(ValidationError):
        scaling.ScalingPlan.model_validate({**_plan().model_dump(), "extra": 1})
