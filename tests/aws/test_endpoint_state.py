"""Sleep and wake through the stack (mme/aws/endpoint_state.py), against moto."""

from __future__ import annotations

import json

import pytest
from moto_stage import STACK, STAND_IN_TEMPLATE, SWITCH, MotoStage

from mme.aws.endpoint_state import (
    CAPABILITIES,
    EndpointState,
    EndpointStateError,
    Progress,
    StageEndpoint,
    wait_for,
)
from mme.aws.names import ASLEEP, AWAKE


def _endpoint(stage: MotoStage, stack_name: str = STACK) -> StageEndpoint:
    return StageEndpoint.of(stage.session, stack_name=stack_name, switch_parameter=SWITCH, endpoint_name=STACK)


def _read(stage: MotoStage) -> EndpointState:
    return _endpoint(stage).state()


def test_an_awake_stage_reads_as_awake_and_serving(moto_stage: MotoStage) -> None:
    state = _read(moto_stage)
    assert state.switch == AWAKE
    assert state.stack_status == "CREATE_COMPLETE"
    assert state.endpoint_status == "InService"
    assert state.instances == 1
    assert state.serving
    assert not state.busy
    assert not state.asleep


def test_sleep_flips_the_switch_and_updates_the_stack_with_its_previous_template(moto_stage: MotoStage) -> None:
    # moto answers "No updates" here (it does not resolve the SSM parameter again), so the test checks the update
    # mme asks for: the previous template, every parameter's previous value (the switch's is its SSM name, which
    # CloudFormation resolves again), and the capabilities the stack's IAM resources need.
    _endpoint(moto_stage).request(ASLEEP)
    assert moto_stage.switch() == ASLEEP
    (update,) = moto_stage.calls["UpdateStack"]
    assert update == {
        "StackName": STACK,
        "UsePreviousTemplate": True,
        "Parameters": [{"ParameterKey": "EndpointState", "UsePreviousValue": True}],
        "Capabilities": list(CAPABILITIES),
    }


def test_waiting_for_sleep_follows_the_endpoint_until_cloudformation_has_deleted_it(moto_stage: MotoStage) -> None:
    looks: list[Progress] = []
    ticks = iter(range(0, 10_000, 15))

    def one_poll_later(seconds: float) -> None:
        # CloudFormation's part, which moto does not play: the endpoint goes after the first look.
        if len(looks) == 1:
            moto_stage.delete_endpoint()

    state = wait_for(
        lambda: _read(moto_stage),
        awake=False,
        timeout_seconds=600,
        typical_seconds=120,
        on_progress=looks.append,
        clock=lambda: float(next(ticks)),
        sleep=one_poll_later,
    )
    assert state.endpoint_status is None
    assert [look.state.endpoint_status for look in looks] == ["InService", None]
    assert looks[0].remaining > looks[1].remaining


def test_waiting_gives_up_with_the_state_it_saw(moto_stage: MotoStage) -> None:
    ticks = iter(range(0, 10_000, 100))
    with pytest.raises(EndpointStateError) as raised:
        wait_for(
            lambda: _read(moto_stage),
            awake=False,
            timeout_seconds=250,
            typical_seconds=120,
            clock=lambda: float(next(ticks)),
            sleep=lambda seconds: None,
        )
    assert "gave up waiting" in str(raised.value)
    assert "endpoint InService" in str(raised.value)


def test_a_missing_stack_or_switch_is_a_clear_error(moto_stage: MotoStage) -> None:
    with pytest.raises(EndpointStateError, match="does not exist: deploy it"):
        _endpoint(moto_stage, "Mme-qa-Endpoint").request(ASLEEP)
    moto_stage.client("ssm").delete_parameter(Name=SWITCH)
    with pytest.raises(EndpointStateError, match="has no sleep switch"):
        _read(moto_stage)
    assert "UpdateStack" not in moto_stage.calls


def test_a_switch_holding_anything_else_names_the_fix(moto_stage: MotoStage) -> None:
    moto_stage.client("ssm").put_parameter(Name=SWITCH, Value="off", Type="String", Overwrite=True)
    with pytest.raises(EndpointStateError, match="aws ssm put-parameter --overwrite"):
        _read(moto_stage)


@pytest.mark.parametrize(
    ("stack_status", "busy"),
    [("UPDATE_IN_PROGRESS", True), ("UPDATE_COMPLETE_CLEANUP_IN_PROGRESS", True), ("UPDATE_COMPLETE", False)],
)
def test_a_stack_in_progress_is_busy(stack_status: str, busy: bool) -> None:
    assert EndpointState(switch=AWAKE, stack_status=stack_status, endpoint_status="InService").busy is busy


def test_a_deploy_while_asleep_resolves_the_switch_again_and_creates_nothing_that_sleeps(
    moto_stage: MotoStage,
) -> None:
    # What `cdk deploy` and the pipeline do: a new template, no parameter values (the switch's default is its name).
    moto_stage.client("ssm").put_parameter(Name=SWITCH, Value=ASLEEP, Type="String", Overwrite=True)
    deployed = json.loads(json.dumps(STAND_IN_TEMPLATE))
    deployed["Resources"]["NewTopic"] = {"Type": "AWS::SNS::Topic"}
    deployed["Resources"]["SleepingQueue"] = {"Type": "AWS::SQS::Queue", "Condition": "EndpointAwake"}
    cloudformation = moto_stage.client("cloudformation")
    cloudformation.update_stack(StackName=STACK, TemplateBody=json.dumps(deployed))
    (stack,) = cloudformation.describe_stacks(StackName=STACK)["Stacks"]
    assert stack["StackStatus"] == "UPDATE_COMPLETE"
    assert stack["Parameters"] == [{"ParameterKey": "EndpointState", "ParameterValue": ASLEEP}]
    summaries = cloudformation.list_stack_resources(StackName=STACK)["StackResourceSummaries"]
    created = {summary["ResourceType"] for summary in summaries}
    assert "AWS::SNS::Topic" in created
    assert "AWS::SQS::Queue" not in created
    assert not moto_stage.client("sqs").list_queues().get("QueueUrls")
    assert moto_stage.switch() == ASLEEP
