"""The handlers' side of telemetry: each request's figures, and its capture record when sampled, to ``serve``.

Runs in every MMS worker (both model host modes). A request only puts a small tuple on a bounded queue; a thread
of the worker builds the capture record and sends it to :mod:`handler.telemetry.collector` over a Unix socket, so
neither a slow collector nor a slow destination behind it can slow a request. What the queue cannot take is counted,
logged and reported with the next message that gets through.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from handler.host.protocol import send_message
from handler.settings import ServingSettings, telemetry_socket
from handler.telemetry.records import CapturedRequest, capture_record

logger = logging.getLogger(__name__)

#: Reports waiting for the sender, at most; a worker answers one request at a time, so this is only reached when
#: the collector is gone.
QUEUE_SIZE = 1000
#: After a failed connection, reports are dropped (and counted) for this long before the next try.
RECONNECT_SECONDS = 1.0
SEND_TIMEOUT_SECONDS = 5.0

#: Request headers naming the request, in order of preference: the caller's InferenceId, then a front end's id.
REQUEST_ID_HEADERS = ("x-amzn-sagemaker-inference-id", "x-amzn-requestid")
CUSTOM_ATTRIBUTES_HEADER = "x-amzn-sagemaker-custom-attributes"
#: The model as the caller named it (``TargetModel``); MMS's model name is opaque (a hash, on AWS and locally).
TARGET_MODEL_HEADER = "x-amzn-sagemaker-target-model"


def target_model(headers: Mapping[str, str], model_name: str) -> str:
    """The model as the caller named it, or MMS's name when no front end said (a direct call to the container)."""
    return headers.get(TARGET_MODEL_HEADER, "").strip() or model_name


def request_id(headers: Mapping[str, str]) -> str:
    """The request's id from its headers, or a new one."""
    for name in REQUEST_ID_HEADERS:
        value = headers.get(name, "").strip()
        if value:
            return value
    return str(uuid.uuid4())


@dataclass(frozen=True)
class RequestOutcome:
    """One answered request, as the handler saw it: ``model`` is MMS's name for the model."""

    model_name: str
    headers: Mapping[str, str]
    body: bytes | bytearray | str | None
    status: int
    response: bytes
    response_type: str | None
    received: datetime
    latency_seconds: float
    model_latency_seconds: float | None = None
    batch_size: int | None = None


@dataclass(frozen=True)
class _Load:
    model_name: str
    seconds: float
    ok: bool


class TelemetryReporter:
    """Reports requests and loads of this worker to ``serve``'s collector; a no-op when telemetry is off."""

    def __init__(self, settings: ServingSettings, *, sampler: random.Random | None = None) -> None:
        self.settings = settings
        self._random = sampler or random.Random()  # noqa: S311 - sampling, not security
        self._queue: queue.Queue[RequestOutcome | _Load] = queue.Queue(QUEUE_SIZE)
        self._lock = threading.Lock()
        self._dropped = 0
        self._sock: socket.socket | None = None
        self._retry_at = 0.0
        self._thread: threading.Thread | None = None

    def request(self, outcome: RequestOutcome) -> None:
        if self.settings.telemetry_enabled:
            self._put(outcome)

    def load(self, model_name: str, seconds: float, *, ok: bool) -> None:
        if self.settings.telemetry_enabled:
            self._put(_Load(model_name, seconds, ok))

    def _put(self, report: RequestOutcome | _Load) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="telemetry reporter", daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait(report)
        except queue.Full:
            self._drop(1)

    def _drop(self, count: int) -> None:
        with self._lock:
            self._dropped += count
            dropped = self._dropped
        if dropped == count or dropped % 1000 < count:
            logger.warning("telemetry: %d reports dropped so far (serve's collector is not taking them)", dropped)

    def _run(self) -> None:
        while True:
            report = self._queue.get()
            fields, payload = self._message(report)
            if not self._send(fields, payload):
                self._drop(1)

    def _message(self, report: RequestOutcome | _Load) -> tuple[dict[str, object], bytes]:
        if isinstance(report, _Load):
            return {"kind": "load", "model_name": report.model_name, "seconds": report.seconds, "ok": report.ok}, b""
        model = target_model(report.headers, report.model_name)
        fields: dict[str, object] = {
            "kind": "request",
            "model": model,
            "model_name": report.model_name,
            "received": report.received.timestamp(),
            "status": report.status,
            "latency": report.latency_seconds,
            "model_latency": report.model_latency_seconds,
            "batch_size": report.batch_size,
        }
        return fields, self._capture(model, report)

    def _capture(self, model: str, report: RequestOutcome) -> bytes:
        """The request's capture record if it is sampled, else nothing."""
        share = self.settings.capture_percent_of(model)
        if share <= 0 or self._random.random() * 100 >= share:
            return b""
        content = self.settings.capture_content
        body = report.body.encode("utf-8") if isinstance(report.body, str) else bytes(report.body or b"")
        captured = CapturedRequest(
            time=report.received.astimezone(UTC),
            request_id=request_id(report.headers),
            model=model,
            content_type=report.headers.get("content-type"),
            accept=report.headers.get("accept"),
            inputs=body if content in ("both", "inputs") else None,
            outputs=bytes(report.response) if content in ("both", "outputs") else None,
            output_content_type=report.response_type,
            status=report.status,
            latency_seconds=report.latency_seconds,
            model_latency_seconds=report.model_latency_seconds,
            custom_attributes=report.headers.get(CUSTOM_ATTRIBUTES_HEADER),
        )
        return capture_record(captured, max_bytes=self.settings.capture_max_record_bytes)

    def _send(self, fields: dict[str, object], payload: bytes) -> bool:
        with self._lock:
            dropped, self._dropped = self._dropped, 0
        fields["dropped"] = dropped
        for _ in range(2):  # a connection the collector closed (serve restarted it) is found on the first send
            sock = self._connected()
            if sock is None:
                break
            try:
                send_message(sock, fields, payload)
                return True
            except OSError:
                self._close()
        with self._lock:
            self._dropped += dropped
        return False

    def _connected(self) -> socket.socket | None:
        if self._sock is not None:
            return self._sock
        if time.monotonic() < self._retry_at:
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(SEND_TIMEOUT_SECONDS)
        try:
            sock.connect(str(telemetry_socket(self.settings.run_dir)))
        except OSError as error:
            sock.close()
            self._retry_at = time.monotonic() + RECONNECT_SECONDS
            logger.debug("telemetry: cannot reach serve's collector: %s", error)
            return None
        self._sock = sock
        return sock

    def _close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


_reporter: TelemetryReporter | None = None
_reporter_lock = threading.Lock()


def reporter(settings: ServingSettings) -> TelemetryReporter:
    """This process's reporter (one per worker)."""
    global _reporter
    with _reporter_lock:
        if _reporter is None:
            _reporter = TelemetryReporter(settings)
        return _reporter


@dataclass
class Answered:
    """What a handler answered one request with; :func:`reported_request` reports it when the request ends."""

    status: int = 500
    response: bytes = b""
    response_type: str | None = None
    model_seconds: float | None = None
    batch_size: int | None = None


@contextmanager
def reported_request(
    settings: ServingSettings, *, model_name: str, headers: Mapping[str, str], body: bytes | bytearray | str | None
) -> Iterator[Answered]:
    """Time one request of MMS's batch and report it when the block ends, with what the block set on the yielded
    :class:`Answered`; a ``MemoryError`` leaving the block (MMS answers 507) is reported as 507."""
    answered = Answered()
    received, started = datetime.now(UTC), time.perf_counter()
    try:
        yield answered
    except MemoryError:
        answered.status, answered.response, answered.response_type = 507, b"", None
        raise
    finally:
        reporter(settings).request(
            RequestOutcome(
                model_name=model_name,
                headers=headers,
                body=body,
                status=answered.status,
                response=answered.response,
                response_type=answered.response_type,
                received=received,
                latency_seconds=time.perf_counter() - started,
                model_latency_seconds=answered.model_seconds,
                batch_size=answered.batch_size,
            )
        )
