"""A SageMaker Runtime client that waits out what a multi-model endpoint answers while it is busy.

SageMaker answers `ModelNotReadyException` (429) while a model is still downloading or loading, and throttles when
the endpoint is overloaded; both mean "try again shortly". botocore's standard retry mode retries throttling and
transient errors with exponential backoff and jitter, but not `ModelNotReadyException`, which the SageMaker Runtime
model does not mark retryable; one more handler on botocore's own `needs-retry` event adds it, with the same kind of
backoff. A cold model can take longer than SageMaker's 60 s invocation limit to answer, so the read timeout is above
it rather than botocore's default 60 s.
"""

from __future__ import annotations

import random
from typing import Any

from botocore.config import Config

#: Seconds botocore waits for an answer: above SageMaker's own 60 s limit on an invocation, so SageMaker's answer
#: (a prediction or its error) always arrives before the client gives up.
READ_TIMEOUT_SECONDS = 75
#: Attempts in all (the first one included) for throttling, transient errors and ModelNotReadyException.
MAX_ATTEMPTS = 8
#: Upper bound of one backoff delay, in seconds.
MAX_BACKOFF_SECONDS = 20.0
NOT_READY = "ModelNotReadyException"


def runtime_config(*, max_attempts: int = MAX_ATTEMPTS) -> Config:
    """botocore settings of the runtime client: standard retries, a read timeout above SageMaker's 60 s."""
    return Config(
        read_timeout=READ_TIMEOUT_SECONDS,
        connect_timeout=10,
        retries={"mode": "standard", "max_attempts": max_attempts},
    )


def retry_model_not_ready(client: Any, *, max_attempts: int = MAX_ATTEMPTS) -> Any:
    """Make `client` (a sagemaker-runtime client) retry `ModelNotReadyException` with exponential backoff and full
    jitter, up to `max_attempts` attempts in all. Returns the client."""

    def needs_retry(response: Any = None, attempts: int = 1, **_: Any) -> float | None:
        if response is None or attempts >= max_attempts:
            return None
        code = response[1].get("Error", {}).get("Code") if isinstance(response, tuple) else None
        if code != NOT_READY:
            return None  # botocore's standard handler (registered first) has decided for everything else
        return random.uniform(0, min(MAX_BACKOFF_SECONDS, 2.0**attempts))  # noqa: S311 -- jitter, not secrecy

    client.meta.events.register("needs-retry.sagemaker-runtime.InvokeEndpoint", needs_retry)
    return client


def runtime_client(session: Any, *, endpoint_url: str | None = None, max_attempts: int = MAX_ATTEMPTS) -> Any:
    """A sagemaker-runtime client of `session` (AWS, or a local `mme serve` at `endpoint_url`) that retries as above."""
    options: dict[str, Any] = {"config": runtime_config(max_attempts=max_attempts)}
    if endpoint_url is not None:
        options["endpoint_url"] = endpoint_url
    return retry_model_not_ready(session.client("sagemaker-runtime", **options), max_attempts=max_attempts)
