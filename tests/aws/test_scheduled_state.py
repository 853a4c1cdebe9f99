"""The wake schedule's function (mme/aws/scheduled_state.py), against moto."""

from __future__ import annotations

import pytest
from moto_stage import KEEP_AWAKE, STACK, SWITCH, MotoStage

from mme.aws.endpoint_state import EndpointStateError
from mme.aws.names import ASLEEP, AWAKE
from mme.aws.scheduled_state import apply_schedule


def _apply(stage: MotoStage, event: dict[str, object]) -> bool:
    return apply_schedule(
        event,
        cloudformation=stage.client("cloudformation"),
        ssm=stage.client("ssm"),
        stack_name=STACK,
        switch_parameter=SWITCH,
        keep_awake_parameter=KEEP_AWAKE,
    )


def _keep_awake(stage: MotoStage) -> str:
    return str(stage.client("ssm").get_parameter(Name=KEEP_AWAKE)["Parameter"]["Value"])


def test_the_scheduled_sleep_clears_the_mark_and_sleeps_through_the_stack(moto_stage: MotoStage) -> None:
    _apply(moto_stage, {"state": ASLEEP})
    assert moto_stage.switch() == ASLEEP
    assert _keep_awake(moto_stage) == "false"
    (update,) = moto_stage.calls["UpdateStack"]
    assert update["UsePreviousTemplate"] is True


def test_the_scheduled_wake_marks_the_stage_kept_awake_and_wakes_it(moto_stage: MotoStage) -> None:
    moto_stage.client("ssm").put_parameter(Name=SWITCH, Value=ASLEEP, Type="String", Overwrite=True)
    _apply(moto_stage, {"state": AWAKE})
    assert moto_stage.switch() == AWAKE
    assert _keep_awake(moto_stage) == "true"
    assert len(moto_stage.calls["UpdateStack"]) == 1


@pytest.mark.parametrize("event", [{}, {"state": "on"}, {"action": "wake"}])
def test_an_event_without_a_state_is_refused_and_changes_nothing(
    moto_stage: MotoStage, event: dict[str, object]
) -> None:
    with pytest.raises(ValueError, match="'state'"):
        _apply(moto_stage, event)
    assert moto_stage.switch() == AWAKE
    assert "UpdateStack" not in moto_stage.calls


def test_a_missing_stack_fails_so_the_scheduler_retries(moto_stage: MotoStage) -> None:
    moto_stage.client("cloudformation").delete_stack(StackName=STACK)
    with pytest.raises(EndpointStateError, match="does not exist"):
        _apply(moto_stage, {"state": ASLEEP})
