"""The wake schedule's function: at the scheduled times, wake the stage's endpoint or put it to sleep.

Deployed by the endpoint stack when the stage sets `wake_schedule` and `sleep_schedule` (stacks/endpoint_sleep.py),
as a Lambda function that EventBridge Scheduler invokes with `{"state": "awake"}` or `{"state": "asleep"}`. It marks
the stage as kept awake (`keep-awake`, read by idle auto-sleep) from the scheduled wake to the scheduled sleep, and
changes the state through the same stack update as `mme wake`/`sleep` (`mme.aws.endpoint_state`). While the stack is
being updated it fails, so the scheduler's retry policy tries again later: a deploy never loses a scheduled change.

Environment: `STACK_NAME`, `SWITCH_PARAMETER`, `KEEP_AWAKE_PARAMETER` (set by the stack).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import boto3

from mme.aws.endpoint_state import request_state
from mme.aws.names import ASLEEP, AWAKE

LOG = logging.getLogger(__name__)
LOG.setLevel(logging.INFO)


def apply_schedule(
    event: Mapping[str, Any], *, cloudformation: Any, ssm: Any, stack_name: str, switch_parameter: str,
    keep_awake_parameter: str,
) -> bool:  # fmt: skip
    """Set the state the scheduled `event` asks for; returns True when a stack update started.

    Raises `ValueError` for an event without a valid state, and `EndpointBusyError` while the stack is being
    updated (the scheduler retries).
    """
    state = event.get("state")
    if state not in (AWAKE, ASLEEP):
        raise ValueError(f"the schedule's event must be {{'state': {AWAKE!r} | {ASLEEP!r}}}, got {dict(event)!r}")
    keep_awake = "true" if state == AWAKE else "false"
    ssm.put_parameter(Name=keep_awake_parameter, Value=keep_awake, Type="String", Overwrite=True)
    started = request_state(
        cloudformation=cloudformation, ssm=ssm, stack_name=stack_name, switch_parameter=switch_parameter, state=state
    )
    LOG.info("scheduled %s for %s: %s", state, stack_name, "stack update started" if started else "already there")
    return started


def handler(event: dict[str, Any], context: Any) -> dict[str, bool]:
    """Lambda entry point."""
    started = apply_schedule(
        event,
        cloudformation=boto3.client("cloudformation"),
        ssm=boto3.client("ssm"),
        stack_name=os.environ["STACK_NAME"],
        switch_parameter=os.environ["SWITCH_PARAMETER"],
        keep_awake_parameter=os.environ["KEEP_AWAKE_PARAMETER"],
    )
    return {"stack_update_started": started}
