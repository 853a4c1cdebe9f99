"""The names the container's capture and metrics are read by: record fields, object keys, metric names.

Shared by the writer (the container) and every reader (``mme capture read``, ``mme top``, the CDK dashboard), so
they cannot drift apart. Imports nothing beyond the standard library.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

# ---- Request capture ------------------------------------------------------------------------------------------

#: What a capture record holds (JSON Lines, one object per request), in the order it is written:
#: ``time`` (ISO 8601 UTC, microseconds, ``Z``), ``request_id``, ``model`` (the target model), ``content_type``,
#: ``accept``, ``inputs`` / ``inputs_encoding``, ``outputs`` / ``outputs_encoding`` / ``output_content_type``,
#: ``status`` (HTTP), ``latency_ms`` (the request in the container), ``model_latency_ms`` (in the model call),
#: ``custom_attributes`` (``X-Amzn-SageMaker-Custom-Attributes`` or null), ``truncated`` (true when a payload was cut
#: to the record size limit).
RECORD_FIELDS = (
    "time",
    "request_id",
    "model",
    "content_type",
    "accept",
    "inputs",
    "inputs_encoding",
    "outputs",
    "outputs_encoding",
    "output_content_type",
    "status",
    "latency_ms",
    "model_latency_ms",
    "custom_attributes",
    "truncated",
)
#: ``inputs_encoding`` / ``outputs_encoding``: the payload as text (it was valid UTF-8), base64 of its bytes, or
#: null when that side was not captured (``MME_CAPTURE_CONTENT``).
UTF8 = "utf-8"
BASE64 = "base64"

#: ``MME_CAPTURE_CONTENT`` values.
CAPTURE_CONTENTS = ("both", "inputs", "outputs")

#: The prefix under the model bucket that a deployed stage captures to (``s3://<bucket>/capture/``).
CAPTURE_PREFIX = "capture"

_UNSAFE_KEY_CHARACTERS = re.compile(r"[^A-Za-z0-9!_.*'()/-]")


def capture_folder(model: str, when: datetime) -> str:
    """The folder of ``model``'s records for the hour of ``when`` (UTC): ``{model}/{yyyy}/{mm}/{dd}/{hh}/``.

    Relative to the capture destination (``s3://bucket/capture/`` on a stage, or ``mme serve --capture``'s root).
    """
    hour = when.astimezone(UTC)
    return f"{safe_model_path(model)}/{hour:%Y/%m/%d/%H}/"


def safe_model_path(model: str) -> str:
    """``model`` as a key segment: SageMaker target-model names are S3 keys already; anything else becomes ``_``,
    and no segment may be empty, ``.`` or ``..``."""
    parts = [_UNSAFE_KEY_CHARACTERS.sub("_", part) for part in model.split("/")]
    return "/".join("_" if part in ("", ".", "..") else part for part in parts)


# ---- Per-model metrics ----------------------------------------------------------------------------------------

#: CloudWatch namespace of the per-model metrics (``MME_METRICS_NAMESPACE``'s default).
METRICS_NAMESPACE = "MultiModelEndpoint/Models"
#: Dimensions of every per-model metric: the endpoint (``MME_METRICS_ENDPOINT``) and the target model.
ENDPOINT_DIMENSION = "EndpointName"
MODEL_DIMENSION = "ModelName"

#: Requests answered (Count).
INVOCATIONS = "Invocations"
#: 1 per failed request, 0 per answered one: Sum is the number of errors, Average the error rate (so a CloudWatch
#: Metrics Insights query can rank models by error rate, which a ratio of two metrics cannot).
ERRORS = "Errors"
ERRORS_4XX = "Errors4xx"
ERRORS_5XX = "Errors5xx"
#: Milliseconds in the model call (for a batched request: its batch's call), and in the container.
MODEL_LATENCY = "ModelLatency"
TOTAL_LATENCY = "TotalLatency"
#: Milliseconds to load the model (Count of loads in the period = SampleCount).
LOAD_TIME = "LoadTime"
#: Texts in the model call that answered a request (more than the request's own texts when batched with others).
BATCH_SIZE = "BatchSize"
#: 1 for each model loaded at the end of the period.
LOADED = "Loaded"

METRIC_UNITS = {
    INVOCATIONS: "Count",
    ERRORS: "Count",
    ERRORS_4XX: "Count",
    ERRORS_5XX: "Count",
    MODEL_LATENCY: "Milliseconds",
    TOTAL_LATENCY: "Milliseconds",
    LOAD_TIME: "Milliseconds",
    BATCH_SIZE: "Count",
    LOADED: "Count",
}
