"""Put a stage's endpoint to sleep and wake it, through its own stack, so CloudFormation never drifts.

The endpoint stack reads the stage's switch (`<ssm_prefix>/endpoint-state`, "awake" | "asleep") as an SSM-typed
parameter, and the endpoint, its autoscaling and its alarms exist only while it says "awake". Flipping the switch and
updating the stack with its previous template makes CloudFormation delete or create them: nothing is removed behind
its back. The same switch is read by every later deploy (`cdk deploy`, the pipeline), so none wakes a sleeping
endpoint by accident.

Used by the `mme sleep`/`wake`/`status` commands, the Python client and the idle auto-sleep function, so it needs only
boto3. Clients are passed in (boto3 `cloudformation`, `ssm`, `sagemaker`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from mme import MmeError
from mme.aws.names import ASLEEP, AWAKE

#: Stack statuses during which another update would be refused (or would interrupt a rollback).
BUSY_SUFFIXES = ("_IN_PROGRESS",)
#: Stack statuses after which the stack serves what its template says.
SETTLED_STATUSES = frozenset({"CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE", "IMPORT_COMPLETE"})
#: What an UpdateStack with UsePreviousTemplate needs to be allowed to change (the stack holds IAM roles).
CAPABILITIES = ("CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND")
#: CloudFormation's answer to an update that changes nothing.
NO_UPDATES = "No updates are to be performed"
#: How long a wake takes, for an estimate before there is a measured one: creating an endpoint takes SageMaker
#: several minutes (instances, image pull, health check); the stack update around it adds little.
TYPICAL_WAKE_SECONDS = 480.0
TYPICAL_SLEEP_SECONDS = 120.0


class EndpointStateError(MmeError):
    """The endpoint cannot change state now; the message says why and what to do."""


class EndpointBusyError(EndpointStateError):
    """The endpoint stack is being updated (a deploy, or another sleep/wake); try again when it settles."""


@dataclass(frozen=True, kw_only=True)
class EndpointState:
    """Where a stage's endpoint stands.

    `switch`: what the stage asks for ("awake" | "asleep"). `stack_status`: the endpoint stack's status, None when
    the stack does not exist. `endpoint_status`: SageMaker's (InService, Creating, Updating, ...), None when there is
    no endpoint. `instances`: the variant's current instance count.
    """

    switch: str
    stack_status: str | None
    endpoint_status: str | None
    instances: int | None = None

    @property
    def busy(self) -> bool:
        """True while the stack is being created, updated or rolled back."""
        return self.stack_status is not None and self.stack_status.endswith(BUSY_SUFFIXES)

    @property
    def asleep(self) -> bool:
        """True when the stage asks for sleep and the stack has settled without an endpoint."""
        return self.switch == ASLEEP and not self.busy and self.endpoint_status is None

    @property
    def serving(self) -> bool:
        """True when the endpoint answers requests."""
        return self.endpoint_status in ("InService", "Updating")

    def describe(self) -> str:
        """One line for people: the switch, the stack and the endpoint."""
        stack = self.stack_status or "not deployed"
        endpoint = self.endpoint_status or "none"
        count = f", {self.instances} instance(s)" if self.instances is not None else ""
        return f"{self.switch} (stack {stack}; endpoint {endpoint}{count})"


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def read_switch(ssm: Any, switch_parameter: str) -> str:
    """The switch's value; raises `EndpointStateError` when the stage has none (its store stack predates it)."""
    try:
        value = str(ssm.get_parameter(Name=switch_parameter)["Parameter"]["Value"])
    except ClientError as error:
        if _error_code(error) == "ParameterNotFound":
            raise EndpointStateError(
                f"the stage has no sleep switch {switch_parameter}: deploy its model store stack again "
                "(it creates the switch), then retry"
            ) from None
        raise
    if value not in (AWAKE, ASLEEP):
        raise EndpointStateError(
            f"the sleep switch {switch_parameter} holds {value!r}; allowed: {AWAKE!r} or {ASLEEP!r}. Fix it with "
            f"`aws ssm put-parameter --overwrite --name {switch_parameter} --value {AWAKE}`"
        )
    return value


def stack_status(cloudformation: Any, stack_name: str) -> str | None:
    """The stack's status, None if it does not exist."""
    try:
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as error:
        if _error_code(error) == "ValidationError" and "does not exist" in str(error):
            return None
        raise
    return str(stacks[0]["StackStatus"]) if stacks else None


def endpoint_status(sagemaker: Any, endpoint_name: str) -> tuple[str | None, int | None]:
    """SageMaker's status of the endpoint and its first variant's current instance count; (None, None) if absent."""
    try:
        endpoint = sagemaker.describe_endpoint(EndpointName=endpoint_name)
    except ClientError as error:
        if _error_code(error) == "ValidationException" and "Could not find endpoint" in str(error):
            return None, None
        raise
    variants = endpoint.get("ProductionVariants") or []
    count = variants[0].get("CurrentInstanceCount") if variants else None
    return str(endpoint["EndpointStatus"]), count


def read_state(
    *, cloudformation: Any, ssm: Any, sagemaker: Any, stack_name: str, switch_parameter: str, endpoint_name: str
) -> EndpointState:
    """The stage's switch, the endpoint stack's status and the endpoint's."""
    status, instances = endpoint_status(sagemaker, endpoint_name)
    return EndpointState(
        switch=read_switch(ssm, switch_parameter),
        stack_status=stack_status(cloudformation, stack_name),
        endpoint_status=status,
        instances=instances,
    )


def request_state(*, cloudformation: Any, ssm: Any, stack_name: str, switch_parameter: str, state: str) -> bool:
    """Set the switch to `state` and update the endpoint stack with its previous template, so CloudFormation creates
    or deletes the endpoint and what exists only for it.

    Returns False when the stack already matches (nothing to do), True when an update started. Raises
    `EndpointBusyError` while the stack is being updated (never changes the state of an updating endpoint), and
    `EndpointStateError` when the endpoint stack does not exist.
    """
    if state not in (AWAKE, ASLEEP):
        raise ValueError(f"state must be {AWAKE!r} or {ASLEEP!r}, got {state!r}")
    status = stack_status(cloudformation, stack_name)
    if status is None:
        raise EndpointStateError(
            f"the endpoint stack {stack_name} does not exist: deploy it (npx cdk deploy, or the pipeline) first"
        )
    if status.endswith(BUSY_SUFFIXES):
        raise EndpointBusyError(f"the endpoint stack {stack_name} is {status}: try again when it has settled")
    previous = read_switch(ssm, switch_parameter)
    ssm.put_parameter(Name=switch_parameter, Value=state, Type="String", Overwrite=True)
    parameters = cloudformation.describe_stacks(StackName=stack_name)["Stacks"][0].get("Parameters", [])
    try:
        cloudformation.update_stack(
            StackName=stack_name,
            UsePreviousTemplate=True,
            # Every parameter keeps its value; the switch's is an SSM key, which CloudFormation resolves again.
            Parameters=[{"ParameterKey": p["ParameterKey"], "UsePreviousValue": True} for p in parameters],
            Capabilities=list(CAPABILITIES),
        )
    except ClientError as error:
        if NO_UPDATES in str(error):
            return False
        # Leave the switch as it was, so the stage's next deploy does not do what this call failed to do.
        ssm.put_parameter(Name=switch_parameter, Value=previous, Type="String", Overwrite=True)
        raise
    return True


@dataclass(frozen=True)
class Progress:
    """One look at a state change under way: seconds elapsed, the estimated seconds left, and the state seen."""

    elapsed: float
    remaining: float
    state: EndpointState


def wait_for(
    read: Callable[[], EndpointState],
    *,
    awake: bool,
    timeout_seconds: float,
    typical_seconds: float,
    poll_seconds: float = 15.0,
    on_progress: Callable[[Progress], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> EndpointState:
    """Poll `read` until the endpoint is serving (`awake`) or gone with the stack settled (not `awake`).

    Reports each look to `on_progress` with an estimate of the time left (the typical duration minus the elapsed
    time, never below one poll). Raises `EndpointStateError` when the stack settles in a failed state or
    `timeout_seconds` pass.
    """
    start = clock()
    while True:
        state = read()
        elapsed = clock() - start
        if on_progress is not None:
            on_progress(Progress(elapsed, max(typical_seconds - elapsed, poll_seconds), state))
        settled = state.stack_status in SETTLED_STATUSES
        if awake and settled and state.endpoint_status == "InService":
            return state
        if not awake and settled and state.endpoint_status is None:
            return state
        if state.stack_status is not None and not state.busy and not settled:
            raise EndpointStateError(
                f"the endpoint stack ended {state.stack_status}: see its events in the CloudFormation console"
            )
        if state.endpoint_status == "Failed":
            raise EndpointStateError("the endpoint failed to start: see its logs in CloudWatch (/aws/sagemaker/...)")
        if elapsed > timeout_seconds:
            raise EndpointStateError(
                f"gave up waiting after {elapsed:.0f} s: the endpoint is {state.describe()}; `mme status` shows more"
            )
        sleep(poll_seconds)


@dataclass(frozen=True, kw_only=True)
class StageEndpoint:
    """One stage's endpoint with the clients to read and change its state: what `mme sleep`/`wake`/`status` and the
    Python client share."""

    cloudformation: Any
    ssm: Any
    sagemaker: Any
    stack_name: str
    switch_parameter: str
    endpoint_name: str

    @classmethod
    def of(cls, session: Any, *, stack_name: str, switch_parameter: str, endpoint_name: str) -> StageEndpoint:
        """Clients of the boto3 `session` for the named stack, switch and endpoint."""
        return cls(
            cloudformation=session.client("cloudformation"),
            ssm=session.client("ssm"),
            sagemaker=session.client("sagemaker"),
            stack_name=stack_name,
            switch_parameter=switch_parameter,
            endpoint_name=endpoint_name,
        )

    def state(self) -> EndpointState:
        """The switch, the stack's status and the endpoint's."""
        return read_state(
            cloudformation=self.cloudformation,
            ssm=self.ssm,
            sagemaker=self.sagemaker,
            stack_name=self.stack_name,
            switch_parameter=self.switch_parameter,
            endpoint_name=self.endpoint_name,
        )

    def request(self, state: str) -> bool:
        """Ask for `state` through the stack (`request_state`); True when a stack update started."""
        return request_state(
            cloudformation=self.cloudformation,
            ssm=self.ssm,
            stack_name=self.stack_name,
            switch_parameter=self.switch_parameter,
            state=state,
        )

    def change(
        self,
        state: str,
        *,
        timeout_seconds: float,
        on_progress: Callable[[Progress], None] | None = None,
        poll_seconds: float = 15.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> EndpointState:
        """Ask for `state` ("awake" | "asleep") unless the stage is there already, and wait until it is."""
        awake = state == AWAKE
        current = self.state()
        done = current.serving if awake else current.asleep
        if not done and not (current.busy and current.switch == state):
            self.request(state)
        return wait_for(
            self.state,
            awake=awake,
            timeout_seconds=timeout_seconds,
            typical_seconds=TYPICAL_WAKE_SECONDS if awake else TYPICAL_SLEEP_SECONDS,
            poll_seconds=poll_seconds,
            on_progress=on_progress,
            sleep=sleep,
        )
