"""The idle auto-sleep function: when the stage's "no invocations" alarm goes off, put the endpoint to sleep.

Deployed by the endpoint stack when the stage sets `auto_sleep` (stacks/endpoint_sleep.py), as a Lambda function
whose code is this module and the two it imports (boto3 only). It sleeps the endpoint through the same stack update
as `mme sleep` (`mme.aws.endpoint_state`), and never one whose stack is being updated or whose endpoint is not in
service: then it resets the alarm to OK, so CloudWatch raises it again after another idle period and the function
looks again.

A stage kept awake by its wake schedule (`keep-awake` is "true", between the scheduled wake and sleep) is left alone
too, the same way.

Environment: `STACK_NAME`, `SWITCH_PARAMETER`, `KEEP_AWAKE_PARAMETER`, `ENDPOINT_NAME` (set by the stack).
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Mapping
from typing import Any

import boto3

from mme.aws.endpoint_state import EndpointBusyError, StageEndpoint
from mme.aws.names import ASLEEP

LOG = logging.getLogger(__name__)
LOG.setLevel(logging.INFO)


class Decision(enum.StrEnum):
    """What the function did with one alarm."""

    SLEPT = "slept"
    ALREADY_ASLEEP = "already asleep"
    NOT_NOW = "not now"  # the stack is updating or the endpoint is not in service; the alarm was reset
    KEPT_AWAKE = "kept awake"  # the wake schedule keeps it awake now; the alarm was reset
    IGNORED = "ignored"  # not an ALARM state change


def _alarm_state(event: Mapping[str, Any]) -> str:
    return str(event.get("alarmData", {}).get("state", {}).get("value", ""))


def decide(
    event: Mapping[str, Any],
    *,
    cloudformation: Any,
    ssm: Any,
    sagemaker: Any,
    cloudwatch: Any,
    stack_name: str,
    switch_parameter: str,
    keep_awake_parameter: str,
    endpoint_name: str,
) -> Decision:
    """Handle one CloudWatch alarm event (the Lambda alarm action's payload) with the given boto3 clients."""
    if _alarm_state(event) != "ALARM":
        return Decision.IGNORED
    endpoint = StageEndpoint(
        cloudformation=cloudformation,
        ssm=ssm,
        sagemaker=sagemaker,
        stack_name=stack_name,
        switch_parameter=switch_parameter,
        endpoint_name=endpoint_name,
    )
    state = endpoint.state()
    if state.switch == ASLEEP:
        return Decision.ALREADY_ASLEEP
    if _kept_awake(ssm, keep_awake_parameter):
        _look_again_later(cloudwatch, event, "kept awake by its wake schedule; will look again later")
        return Decision.KEPT_AWAKE
    if state.busy or state.endpoint_status != "InService":
        LOG.info("not sleeping %s now: %s", endpoint_name, state.describe())
        _look_again_later(cloudwatch, event, f"endpoint {state.describe()}: looking again after the next idle period")
        return Decision.NOT_NOW
    try:
        endpoint.request(ASLEEP)
    except EndpointBusyError as error:  # a deploy started between the look and the update
        LOG.info("not sleeping %s now: %s", endpoint_name, error)
        _look_again_later(cloudwatch, event, str(error))
        return Decision.NOT_NOW
    LOG.info("idle: putting %s to sleep (stack %s)", endpoint_name, stack_name)
    return Decision.SLEPT


def _kept_awake(ssm: Any, keep_awake_parameter: str) -> bool:
    try:
        return ssm.get_parameter(Name=keep_awake_parameter)["Parameter"]["Value"] == "true"
    except ssm.exceptions.ParameterNotFound:
        return False


def _look_again_later(cloudwatch: Any, event: Mapping[str, Any], reason: str) -> None:
    """Set the alarm back to OK: alarm actions run on a change of state, so this makes it fire again when the
    endpoint has been idle for another period."""
    alarm_name = event.get("alarmData", {}).get("alarmName")
    if alarm_name:
        cloudwatch.set_alarm_state(AlarmName=alarm_name, StateValue="OK", StateReason=reason[:1000])


def handler(event: dict[str, Any], context: Any) -> dict[str, str]:
    """Lambda entry point."""
    decision = decide(
        event,
        cloudformation=boto3.client("cloudformation"),
        ssm=boto3.client("ssm"),
        sagemaker=boto3.client("sagemaker"),
        cloudwatch=boto3.client("cloudwatch"),
        stack_name=os.environ["STACK_NAME"],
        switch_parameter=os.environ["SWITCH_PARAMETER"],
        keep_awake_parameter=os.environ["KEEP_AWAKE_PARAMETER"],
        endpoint_name=os.environ["ENDPOINT_NAME"],
    )
    return {"decision": decision.value}
