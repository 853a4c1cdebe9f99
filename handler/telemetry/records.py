"""One captured request as a JSON Lines record (fields: :data:`handler.telemetry.names.RECORD_FIELDS`)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from handler.telemetry.names import BASE64, UTF8


@dataclass(frozen=True)
class CapturedRequest:
    """What a handler saw of one request and its answer; ``None`` payloads were not captured."""

    time: datetime
    request_id: str
    model: str
    content_type: str | None
    accept: str | None
    inputs: bytes | None
    outputs: bytes | None
    output_content_type: str | None
    status: int
    latency_seconds: float
    model_latency_seconds: float | None
    custom_attributes: str | None


def _as_text(payload: bytes) -> tuple[str, str]:
    """The payload as text when it is UTF-8 (JSON and CSV bodies stay readable), else base64."""
    try:
        return payload.decode("utf-8"), UTF8
    except UnicodeDecodeError:
        return base64.b64encode(payload).decode("ascii"), BASE64


def _cut(payload: bytes | None, limit: int) -> bytes | None:
    if payload is None or len(payload) <= limit:
        return payload
    cut = payload[: max(limit, 0)]
    # Never end inside a UTF-8 character: a text body must stay text.
    return cut.decode("utf-8", "ignore").encode("utf-8") if _is_utf8(payload) else cut


def _is_utf8(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _encode(request: CapturedRequest, inputs: bytes | None, outputs: bytes | None, truncated: bool) -> bytes:
    inputs_text, inputs_encoding = _as_text(inputs) if inputs is not None else (None, None)
    outputs_text, outputs_encoding = _as_text(outputs) if outputs is not None else (None, None)
    record = {
        "time": request.time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "request_id": request.request_id,
        "model": request.model,
        "content_type": request.content_type,
        "accept": request.accept,
        "inputs": inputs_text,
        "inputs_encoding": inputs_encoding,
        "outputs": outputs_text,
        "outputs_encoding": outputs_encoding,
        "output_content_type": request.output_content_type,
        "status": request.status,
        "latency_ms": round(request.latency_seconds * 1000, 3),
        "model_latency_ms": None
        if request.model_latency_seconds is None
        else round(request.model_latency_seconds * 1000, 3),
        "custom_attributes": request.custom_attributes,
        "truncated": truncated,
    }
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def capture_record(request: CapturedRequest, *, max_bytes: int) -> bytes:
    """``request`` as one JSON line of at most ``max_bytes`` (newline included): payloads that would not fit are cut,
    the later bytes first, and the record says ``truncated``. Metadata is never cut (its size is bounded by the
    front end's header limits, far below the smallest ``max_bytes`` accepted)."""
    line = _encode(request, request.inputs, request.outputs, False)
    if len(line) <= max_bytes:
        return line
    inputs, outputs = request.inputs, request.outputs
    # Escaping (base64, JSON) makes a payload's encoded size larger than its bytes: shrink until it fits.
    for _ in range(8):
        excess = len(line) - max_bytes
        if excess <= 0:
            return line
        sizes = [len(inputs or b""), len(outputs or b"")]
        total = sum(sizes) or 1
        # Take from each side in proportion to its size, a little more than the excess for the escaping.
        take = [int(size * (excess * 1.1 + 16) / total) + 1 for size in sizes]
        inputs = _cut(inputs, sizes[0] - take[0])
        outputs = _cut(outputs, sizes[1] - take[1])
        line = _encode(request, inputs, outputs, True)
    if len(line) <= max_bytes:
        return line
    return _encode(request, b"" if inputs is not None else None, b"" if outputs is not None else None, True)
