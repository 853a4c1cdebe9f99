"""Sleep without drift, in the template: the stage's switch conditions the endpoint and what exists only for it;
idle auto-sleep is an alarm whose action is a least-privilege function."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Template
from cdk_synth import Synthesized, synth_app

from stacks.endpoint_sleep import STATE_FUNCTION_FILES

#: What exists only while the stage is awake (by logical-ID prefix), and nothing else.
ONLY_WHILE_AWAKE = (
    "ServingEndpoint",  # the endpoint (not ServingEndpointConfig: matched exactly below)
    "AutoscalingRelease",
    "AutoscalingScaling",
    "MonitoringInvocation5XXErrorsAlarm",
    "MonitoringModelLoadingWaitTimeAlarm",
    "MonitoringModelUnloadingTimeAlarm",
    "MonitoringModelCacheHitAlarm",
    "MonitoringModelLatencyAlarm",
    "MonitoringOverheadLatencyAlarm",
    "MonitoringModelsErrorRateAlarm",
    "MonitoringDashboard",
)


def _references(value: Any) -> set[str]:
    """Logical IDs a template value refers to (Ref, Fn::GetAtt, DependsOn is handled by the caller)."""
    found: set[str] = set()
    if isinstance(value, dict):
        if "Ref" in value and isinstance(value["Ref"], str):
            found.add(value["Ref"])
        if "Fn::GetAtt" in value:
            target = value["Fn::GetAtt"]
            found.add(target[0] if isinstance(target, list) else str(target).split(".")[0])
        for item in value.values():
            found |= _references(item)
    elif isinstance(value, list):
        for item in value:
            found |= _references(item)
    return found


@pytest.fixture(scope="module")
def idle_stage(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    return synth_app(tmp_path_factory.mktemp("idle"), {"stages": {"dev": {"auto_sleep": True, "idle_minutes": 30}}})


@pytest.fixture(scope="module")
def idle_endpoint(idle_stage: Synthesized) -> Template:
    return idle_stage.template(idle_stage.stage("dev").endpoint)


def test_the_switch_is_an_ssm_typed_parameter_read_on_every_deploy(dev_endpoint: Template) -> None:
    template = dev_endpoint.to_json()
    assert template["Parameters"]["EndpointState"] == {
        "Type": "AWS::SSM::Parameter::Value<String>",
        "Default": "/mme/dev/endpoint-state",
        "Description": "SSM parameter holding 'awake' or 'asleep' (mme sleep / mme wake flip it)",
    }
    assert template["Conditions"] == {"EndpointAwake": {"Fn::Equals": [{"Ref": "EndpointState"}, "awake"]}}


def test_only_the_endpoint_and_what_exists_for_it_sleep(dev_endpoint: Template) -> None:
    resources = dev_endpoint.to_json()["Resources"]
    conditioned = {logical_id for logical_id, r in resources.items() if r.get("Condition") == "EndpointAwake"}
    expected = {
        logical_id
        for logical_id in resources
        for prefix in ONLY_WHILE_AWAKE
        if logical_id.startswith(prefix) and len(logical_id) == len(prefix) + 8
    }
    assert len(expected) == len(ONLY_WHILE_AWAKE)
    assert conditioned == expected
    # What stays costs nothing per hour: the model, its config, the role, the logs, the scaling function.
    kept_types = {r["Type"] for logical_id, r in resources.items() if logical_id not in conditioned}
    assert {"AWS::SageMaker::Model", "AWS::SageMaker::EndpointConfig", "AWS::Logs::LogGroup"} <= kept_types
    assert "AWS::SageMaker::Endpoint" not in kept_types
    assert "AWS::CloudWatch::Alarm" not in kept_types


@pytest.mark.parametrize("fixture", ["dev_endpoint", "idle_endpoint"])
def test_nothing_that_stays_refers_to_what_sleeps(fixture: str, request: pytest.FixtureRequest) -> None:
    template = request.getfixturevalue(fixture).to_json()
    resources = template["Resources"]
    sleeping = {logical_id for logical_id, r in resources.items() if "Condition" in r}
    for logical_id, resource in resources.items():
        if "Condition" in resource:
            continue
        depends = resource.get("DependsOn", [])
        refs = _references(resource.get("Properties", {})) | set([depends] if isinstance(depends, str) else depends)
        assert not refs & sleeping, logical_id
    for name, output in template.get("Outputs", {}).items():
        assert not _references(output) & sleeping, name


def test_no_idle_sleep_and_no_schedule_unless_the_stage_asks(dev_endpoint: Template) -> None:
    alarms = dev_endpoint.find_resources("AWS::CloudWatch::Alarm").values()
    assert not [a for a in alarms if a["Properties"].get("MetricName") == "Invocations"]
    assert len(dev_endpoint.find_resources("AWS::Lambda::Function")) == 1  # the scaling function only
    dev_endpoint.resource_count_is("AWS::Scheduler::Schedule", 0)


@pytest.fixture(scope="module")
def scheduled_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Template:
    synthesized = synth_app(
        tmp_path_factory.mktemp("schedule"),
        {
            "stages": {
                "dev": {
                    "wake_schedule": "cron(0 8 ? * MON-FRI *)",
                    "sleep_schedule": "cron(0 19 ? * MON-FRI *)",
                    "schedule_timezone": "Europe/Berlin",
                }
            }
        },
    )
    return synthesized.template(synthesized.stage("dev").endpoint)


def test_a_schedule_wakes_and_sleeps_the_stage_through_its_function_even_while_asleep(
    scheduled_endpoint: Template,
) -> None:
    resources = scheduled_endpoint.to_json()["Resources"]
    schedules = {
        r["Properties"]["Target"]["Input"]: r for r in resources.values() if r["Type"] == "AWS::Scheduler::Schedule"
    }
    assert set(schedules) == {'{"state": "awake"}', '{"state": "asleep"}'}
    wake, sleep = schedules['{"state": "awake"}'], schedules['{"state": "asleep"}']
    assert wake["Properties"]["ScheduleExpression"] == "cron(0 8 ? * MON-FRI *)"
    assert sleep["Properties"]["ScheduleExpression"] == "cron(0 19 ? * MON-FRI *)"
    for schedule in (wake, sleep):
        assert "Condition" not in schedule  # the wake must run while the endpoint sleeps
        props = schedule["Properties"]
        assert props["ScheduleExpressionTimezone"] == "Europe/Berlin"
        assert props["FlexibleTimeWindow"] == {"Mode": "OFF"}
        assert props["Target"]["RetryPolicy"]["MaximumEventAgeInSeconds"] == 3600
    ((function_id, function),) = [
        (i, r) for i, r in resources.items() if r["Type"] == "AWS::Lambda::Function" and i.startswith("AwakeSchedule")
    ]
    assert wake["Properties"]["Target"]["Arn"] == {"Fn::GetAtt": [function_id, "Arn"]}
    assert function["Properties"]["Handler"] == "mme.aws.scheduled_state.handler"
    # The scheduler's role may start that function and nothing else.
    role_id = wake["Properties"]["Target"]["RoleArn"]["Fn::GetAtt"][0]
    (invoke,) = [
        statement
        for policy in resources.values()
        if policy["Type"] == "AWS::IAM::Policy" and policy["Properties"]["Roles"] == [{"Ref": role_id}]
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]
    assert invoke["Action"] == "lambda:InvokeFunction"
    assert invoke["Resource"] == {"Fn::GetAtt": [function_id, "Arn"]}
    trust = resources[role_id]["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]
    assert trust["Principal"] == {"Service": "scheduler.amazonaws.com"}
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": "111111111111"}}
    # Its function may write the keep-awake mark, which idle auto-sleep only reads.
    statements = {
        statement["Sid"]: statement
        for logical_id, policy in resources.items()
        if policy["Type"] == "AWS::IAM::Policy" and logical_id.startswith("AwakeScheduleFunction")
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    }
    assert sorted(statements["WriteKeepAwake"]["Action"]) == ["ssm:GetParameter", "ssm:PutParameter"]


def test_idle_alarm_fires_after_idle_minutes_without_invocations_and_starts_the_function(
    idle_endpoint: Template,
) -> None:
    resources = idle_endpoint.to_json()["Resources"]
    ((alarm_id, alarm),) = [
        (i, r) for i, r in resources.items() if r["Type"] == "AWS::CloudWatch::Alarm" and i.startswith("IdleSleep")
    ]
    props = alarm["Properties"]
    assert props["AlarmName"] == "Mme-dev-Endpoint-idle"
    assert (props["Namespace"], props["MetricName"], props["Statistic"]) == ("AWS/SageMaker", "Invocations", "Sum")
    assert {d["Name"]: d["Value"] for d in props["Dimensions"]} == {
        "EndpointName": "Mme-dev-Endpoint",
        "VariantName": "AllTraffic",
    }
    # 30 minutes = 6 periods of 5 minutes, all of them below one invocation; no datapoint counts as idle.
    assert (props["Period"], props["EvaluationPeriods"], props["DatapointsToAlarm"]) == (300, 6, 6)
    assert (props["ComparisonOperator"], props["Threshold"]) == ("LessThanThreshold", 1)
    assert props["TreatMissingData"] == "breaching"
    assert alarm["Condition"] == "EndpointAwake"
    ((function_id, function),) = [
        (i, r) for i, r in resources.items() if r["Type"] == "AWS::Lambda::Function" and i.startswith("IdleSleep")
    ]
    assert props["AlarmActions"] == [{"Fn::GetAtt": [function_id, "Arn"]}]
    assert function["Properties"]["Handler"] == "mme.aws.idle_sleep.handler"
    assert function["Properties"]["Environment"]["Variables"] == {
        "STACK_NAME": "Mme-dev-Endpoint",
        "SWITCH_PARAMETER": "/mme/dev/endpoint-state",
        "KEEP_AWAKE_PARAMETER": "/mme/dev/keep-awake",
        "ENDPOINT_NAME": "Mme-dev-Endpoint",
    }
    (permission,) = [r for r in resources.values() if r["Type"] == "AWS::Lambda::Permission"]
    assert permission["Properties"]["Principal"] == "lambda.alarms.cloudwatch.amazonaws.com"
    assert permission["Condition"] == "EndpointAwake"
    assert alarm_id in json.dumps(permission["Properties"]["SourceArn"])


def test_the_idle_function_may_update_only_its_stack_and_flip_only_the_switch(idle_endpoint: Template) -> None:
    statements = {
        statement["Sid"]: statement
        for logical_id, policy in idle_endpoint.find_resources("AWS::IAM::Policy").items()
        if logical_id.startswith("IdleSleep")
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    }
    assert set(statements) == {
        "WriteFunctionLogs",
        "FlipTheSwitch",
        "ReadKeepAwake",
        "UpdateThisStack",
        "PassTheDeployRole",
        "ReadTheEndpoint",
        "ResetTheIdleAlarm",
    }
    flat = {sid: json.dumps(s["Resource"]) for sid, s in statements.items()}
    assert flat["FlipTheSwitch"].endswith(':parameter/mme/dev/endpoint-state"')
    assert statements["ReadKeepAwake"]["Action"] == "ssm:GetParameter"
    assert flat["ReadKeepAwake"].endswith(':parameter/mme/dev/keep-awake"')
    assert ":stack/Mme-dev-Endpoint/*" in flat["UpdateThisStack"]
    assert sorted(statements["UpdateThisStack"]["Action"]) == [
        "cloudformation:DescribeStacks",
        "cloudformation:UpdateStack",
    ]
    assert ":role/cdk-*-cfn-exec-role-111111111111-eu-west-1" in flat["PassTheDeployRole"]
    assert statements["PassTheDeployRole"]["Condition"] == {
        "StringEquals": {"iam:PassedToService": "cloudformation.amazonaws.com"}
    }
    assert flat["ReadTheEndpoint"].endswith(':endpoint/mme-dev-endpoint"')
    assert flat["ResetTheIdleAlarm"].endswith(':alarm:Mme-dev-Endpoint-idle"')
    for statement in statements.values():
        assert statement["Resource"] != "*"


def test_the_idle_function_ships_only_its_own_modules(idle_stage: Synthesized) -> None:
    bundles = [path for path in idle_stage.outdir.glob("asset.*") if (path / "mme" / "aws" / "idle_sleep.py").is_file()]
    assert len(bundles) == 1
    shipped = sorted(p.relative_to(bundles[0]).as_posix() for p in bundles[0].rglob("*") if p.is_file())
    assert shipped == sorted(STATE_FUNCTION_FILES)
    # And those modules import nothing the Lambda runtime lacks (boto3 and the standard library only).
    for relative in shipped:
        source = (bundles[0] / relative).read_text()
        for line in source.splitlines():
            if line.startswith(("import ", "from ")) and "mme" not in line:
                module = line.split()[1].split(".")[0]
                assert module in {"__future__", "boto3", "botocore", "enum", "logging", "os", "re", "time",
                                  "collections", "dataclasses", "typing"}, (relative, line)  # fmt: skip
    assert Path(bundles[0], "mme", "aws", "idle_sleep.py").read_text().count("def handler(") == 1
