"""The idle auto-sleep function's decisions (mme/aws/idle_sleep.py), against moto."""

from __future__ import annotations

from typing import Any

from moto_stage import KEEP_AWAKE, STACK, SWITCH, MotoStage

from mme.aws.idle_sleep import Decision, decide
from mme.aws.names import ASLEEP, AWAKE

ALARM = "Mme-dev-Endpoint-idle"


def _alarm_event(state: str) -> dict[str, Any]:
    """The payload CloudWatch sends a Lambda alarm action."""
    return {
        "source": "aws.cloudwatch",
        "alarmArn": f"arn:aws:cloudwatch:eu-west-1:123456789012:alarm:{ALARM}",
        "alarmData": {"alarmName": ALARM, "state": {"value": state, "reason": "Threshold Crossed"}},
    }


def _decide(stage: MotoStage, state: str) -> Decision:
    cloudwatch = stage.client("cloudwatch")
    if not cloudwatch.describe_alarms(AlarmNames=[ALARM])["MetricAlarms"]:
        cloudwatch.put_metric_alarm(
            AlarmName=ALARM,
            Namespace="AWS/SageMaker",
            MetricName="Invocations",
            Statistic="Sum",
            Period=300,
            EvaluationPeriods=12,
            Threshold=1,
            ComparisonOperator="LessThanThreshold",
        )
        cloudwatch.set_alarm_state(AlarmName=ALARM, StateValue="ALARM", StateReason="idle")
    return decide(
        _alarm_event(state),
        cloudformation=stage.client("cloudformation"),
        ssm=stage.client("ssm"),
        sagemaker=stage.client("sagemaker"),
        cloudwatch=cloudwatch,
        stack_name=STACK,
        switch_parameter=SWITCH,
        keep_awake_parameter=KEEP_AWAKE,
        endpoint_name=STACK,
    )


def _alarm_state(stage: MotoStage) -> str:
    return str(stage.client("cloudwatch").describe_alarms(AlarmNames=[ALARM])["MetricAlarms"][0]["StateValue"])


def test_an_idle_serving_endpoint_is_put_to_sleep_through_its_stack(moto_stage: MotoStage) -> None:
    assert _decide(moto_stage, "ALARM") is Decision.SLEPT
    assert moto_stage.switch() == ASLEEP
    (update,) = moto_stage.calls["UpdateStack"]
    assert update["StackName"] == STACK
    assert update["UsePreviousTemplate"] is True


def test_an_alarm_going_back_to_ok_changes_nothing(moto_stage: MotoStage) -> None:
    assert _decide(moto_stage, "OK") is Decision.IGNORED
    assert moto_stage.switch() == AWAKE
    assert "UpdateStack" not in moto_stage.calls
    assert "DescribeEndpoint" not in moto_stage.calls


def test_an_endpoint_already_asleep_is_left_alone(moto_stage: MotoStage) -> None:
    moto_stage.client("ssm").put_parameter(Name=SWITCH, Value=ASLEEP, Type="String", Overwrite=True)
    assert _decide(moto_stage, "ALARM") is Decision.ALREADY_ASLEEP
    assert "UpdateStack" not in moto_stage.calls


def test_an_endpoint_not_in_service_is_not_slept_and_the_alarm_is_reset_to_look_again(
    moto_stage: MotoStage,
) -> None:
    # Awake but without an endpoint: CloudFormation is still creating it (a wake under way).
    moto_stage.delete_endpoint()
    assert _decide(moto_stage, "ALARM") is Decision.NOT_NOW
    assert moto_stage.switch() == AWAKE
    assert "UpdateStack" not in moto_stage.calls
    assert _alarm_state(moto_stage) == "OK"


def test_a_stage_kept_awake_by_its_schedule_is_left_alone(moto_stage: MotoStage) -> None:
    moto_stage.client("ssm").put_parameter(Name=KEEP_AWAKE, Value="true", Type="String")
    assert _decide(moto_stage, "ALARM") is Decision.KEPT_AWAKE
    assert moto_stage.switch() == AWAKE
    assert "UpdateStack" not in moto_stage.calls
    assert _alarm_state(moto_stage) == "OK"
    # After the scheduled sleep has cleared the mark, idleness counts again.
    moto_stage.client("ssm").put_parameter(Name=KEEP_AWAKE, Value="false", Type="String", Overwrite=True)
    moto_stage.client("cloudwatch").set_alarm_state(AlarmName=ALARM, StateValue="ALARM", StateReason="idle")
    assert _decide(moto_stage, "ALARM") is Decision.SLEPT
