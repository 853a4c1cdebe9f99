"""Invoke a stage's endpoint from Python, and wake it first when it sleeps ("start it again when you need a
prediction").

    from mme.client import StageClient

    client = StageClient("dev", region="eu-west-1", wake=True, on_progress=print)
    client.predict("sentiment.tar.gz", "what a lovely day")
    # {'label': 'positive', 'scores': {'negative': 0.03, 'positive': 0.97}, ...}

`predict` sends one text as `{"input_text": ...}` and returns the decoded answer; `invoke` sends any body and returns
the raw bytes. `ModelNotReadyException` and throttling are retried with backoff (`mme.aws.runtime`). When the
endpoint sleeps, a client made with `wake=True` wakes it through the stage's stack (`mme.aws.endpoint_state`), reports
progress to `on_progress`, and then invokes; without it, `EndpointAsleepError` says how to wake it. `owner` names a
directly deployed stage (`Mme-<owner>-<stage>-*`); leave it empty for the pipeline's stages.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from mme import MmeError
from mme.aws.endpoint_state import EndpointState, Progress, StageEndpoint
from mme.aws.names import AWAKE, StageNames
from mme.aws.runtime import runtime_client
from mme.aws.stage import DeployedStage, find_stage

#: How long `wake` waits for a sleeping endpoint to come into service (SageMaker takes minutes).
WAKE_TIMEOUT_SECONDS = 1800.0


class EndpointAsleepError(MmeError):
    """The stage's endpoint sleeps (or has no endpoint stack) and this client was not asked to wake it."""


class StageClient:
    """Predictions from one deployed stage's multi-model endpoint.

    Args:
        stage: the stage name from cdk.json, e.g. "dev".
        owner: the owner of a directly deployed stage; "" for a stage the pipeline deploys.
        region: AWS region (default: the AWS configuration's).
        session: a boto3 session to use instead of a new one in `region`.
        wake: wake a sleeping endpoint before invoking, and wait for it.
        on_progress: called with each look while waking (elapsed, estimated seconds left, state).
        wait_timeout_seconds: how long to wait for a wake.
        poll_seconds: how often to look while waking.
        runtime: the sagemaker-runtime client to invoke with (default: the session's, retrying as `mme.aws.runtime`
            does); for example one pointed at a local `mme serve`.

    Raises `mme.aws.stage.StageNotFoundError` when the stage's store is not deployed.
    """

    def __init__(
        self,
        stage: str,
        *,
        owner: str = "",
        region: str | None = None,
        session: Any = None,
        wake: bool = False,
        on_progress: Callable[[Progress], None] | None = None,
        wait_timeout_seconds: float = WAKE_TIMEOUT_SECONDS,
        poll_seconds: float = 15.0,
        runtime: Any = None,
    ) -> None:
        if session is None:
            import boto3

            session = boto3.session.Session(region_name=region)
        self.deployed: DeployedStage = find_stage(session, StageNames(stage=stage, owner=owner))
        self.endpoint_name = self.deployed.endpoint_name or self.deployed.endpoint_stack
        self.wake_on_demand = wake
        self.on_progress = on_progress
        self.wait_timeout_seconds = wait_timeout_seconds
        self.poll_seconds = poll_seconds
        self._session = session
        self._runtime = runtime if runtime is not None else runtime_client(session)

    def endpoint(self) -> StageEndpoint:
        """The stage's endpoint with the clients to read and change its state."""
        return StageEndpoint.of(
            self._session,
            stack_name=self.deployed.endpoint_stack,
            switch_parameter=self.deployed.switch_parameter,
            endpoint_name=self.endpoint_name,
        )

    def state(self) -> EndpointState:
        """The stage's switch, endpoint stack and endpoint."""
        return self.endpoint().state()

    def wake(self) -> EndpointState:
        """Wake the endpoint (if it sleeps) and wait until it serves."""
        return self.endpoint().change(
            AWAKE,
            timeout_seconds=self.wait_timeout_seconds,
            on_progress=self.on_progress,
            poll_seconds=self.poll_seconds,
        )

    def invoke(
        self,
        target_model: str,
        body: bytes | str,
        *,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> bytes:
        """Invoke `target_model` with `body`; returns the answer's bytes. Wakes a sleeping endpoint if asked to."""
        try:
            return self._invoke(target_model, body, content_type, accept)
        except ClientError as error:
            if not _endpoint_missing(error):
                raise
        state = self.state()
        if not self.wake_on_demand:
            raise EndpointAsleepError(
                f"the endpoint of stage {self.deployed.names.qualified!r} sleeps ({state.describe()}): wake it with "
                f"`mme wake --stage {self.deployed.names.stage}`"
                + (f" --owner {self.deployed.names.owner}" if self.deployed.names.owner else "")
                + ", or invoke with `mme invoke --wake` / StageClient(..., wake=True)"
            )
        self.wake()
        return self._invoke(target_model, body, content_type, accept)

    def predict(self, target_model: str, text: str) -> dict[str, Any]:
        """Classify one text with `target_model`; returns the container's JSON answer as a dict."""
        answer = json.loads(self.invoke(target_model, json.dumps({"input_text": text})))
        if not isinstance(answer, dict):
            raise MmeError(f"{target_model} answered {type(answer).__name__}, not a prediction object")
        return answer

    def _invoke(self, target_model: str, body: bytes | str, content_type: str, accept: str) -> bytes:
        answer = self._runtime.invoke_endpoint(
            EndpointName=self.endpoint_name,
            TargetModel=target_model,
            ContentType=content_type,
            Accept=accept,
            Body=body.encode() if isinstance(body, str) else body,
        )
        return bytes(answer["Body"].read())


def _endpoint_missing(error: ClientError) -> bool:
    """True for SageMaker Runtime's answer to an endpoint that does not exist (a ValidationError "... not found")."""
    details = error.response.get("Error", {})
    return details.get("Code") == "ValidationError" and "not found" in str(details.get("Message", ""))
