"""The pieces of request capture and per-model metrics, without MMS: records, EMF documents, the capture writer,
sampling and the settings. The whole path through a running container is tested in tests/local/test_capture.py
and tests/local/test_model_metrics.py."""

from __future__ import annotations

import base64
import io
import json
import random
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from handler.settings import ServingSettings, SettingsError
from handler.telemetry.capture import CaptureWriter, DirectorySink
from handler.telemetry.collector import TelemetryCollector
from handler.telemetry.metrics import MAX_VALUES, ModelPeriod, RequestFigures, emf_documents
from handler.telemetry.names import RECORD_FIELDS, capture_folder, safe_model_path
from handler.telemetry.records import CapturedRequest, capture_record
from handler.telemetry.reporter import RequestOutcome, TelemetryReporter, request_id

WHEN = datetime(2026, 11, 26, 16, 5, 7, 123456, tzinfo=UTC)


def _request(inputs: bytes | None, outputs: bytes | None) -> CapturedRequest:
    return CapturedRequest(
        time=WHEN,
        request_id="r-1",
        model="team/sentiment.tar.gz",
        content_type="application/json",
        accept=None,
        inputs=inputs,
        outputs=outputs,
        output_content_type="application/json",
        status=200,
        latency_seconds=0.0123,
        model_latency_seconds=0.004,
        custom_attributes="a=b",
    )


def test_a_record_holds_every_field_in_order_with_text_kept_as_text() -> None:
    line = capture_record(_request('{"inputs": ["héllo"]}'.encode(), b"[1]"), max_bytes=4096)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    record = json.loads(line)
    assert tuple(record) == RECORD_FIELDS
    assert record["time"] == "2026-11-26T16:05:07.123456Z"
    assert (record["inputs"], record["inputs_encoding"]) == ('{"inputs": ["héllo"]}', "utf-8")
    assert (record["latency_ms"], record["model_latency_ms"]) == (12.3, 4.0)
    assert record["truncated"] is False


def test_bytes_that_are_not_utf8_are_base64_and_a_side_not_captured_is_null() -> None:
    record = json.loads(capture_record(_request(b"\xff\x00\xfe", None), max_bytes=4096))
    assert record["inputs_encoding"] == "base64"
    assert base64.b64decode(record["inputs"]) == b"\xff\x00\xfe"
    assert (record["outputs"], record["outputs_encoding"]) == (None, None)


@pytest.mark.parametrize("max_bytes", [1024, 2000, 5000])
@pytest.mark.parametrize("payload", ["é" * 4000, '"quoted"\n' * 900, "x" * 9000])
def test_a_record_over_the_limit_is_cut_to_fit_and_says_so(max_bytes: int, payload: str) -> None:
    line = capture_record(_request(payload.encode(), payload[:3000].encode()), max_bytes=max_bytes)
    assert len(line) <= max_bytes
    record = json.loads(line)
    assert record["truncated"] is True
    # What is kept is a prefix of each payload, still text.
    assert payload.startswith(record["inputs"])
    assert payload[:3000].startswith(record["outputs"])
    assert record["inputs_encoding"] == "utf-8"


def test_capture_folders_are_per_model_and_hour_and_keys_stay_keys() -> None:
    assert capture_folder("team/sentiment.tar.gz", WHEN) == "team/sentiment.tar.gz/2026/11/26/16/"
    assert safe_model_path("../x y/./m") == "_/x_y/_/m"


def test_emf_documents_carry_at_most_100_values_and_sum_to_the_period() -> None:
    requests = [RequestFigures(status=200 if i % 10 else 503, latency_seconds=0.01, model_latency_seconds=0.005,
                               batch_size=3) for i in range(250)]  # fmt: skip
    periods = {"a": ModelPeriod(requests=requests, load_seconds=[1.5]), "b": ModelPeriod(requests=requests[:3])}
    documents = emf_documents(periods, ["a", "idle"], namespace="NS", endpoint="ep", timestamp_ms=1)
    a = [document for document in documents if document["ModelName"] == "a"]
    assert len(a) == 3
    assert sum(document["Invocations"] for document in a) == 250
    assert all(len(document["TotalLatency"]) <= MAX_VALUES for document in a)
    assert sum(sum(document["Errors5xx"]) for document in a) == 25
    assert sum(len(document["Errors"]) for document in a) == 250
    assert [document.get("LoadTime") for document in a] == [[1500.0], None, None]
    assert [document.get("Loaded") for document in a] == [1, None, None]
    (idle,) = [document for document in documents if document["ModelName"] == "idle"]
    assert {key for key in idle if key != "_aws"} == {"EndpointName", "ModelName", "Loaded"}
    (b,) = [document for document in documents if document["ModelName"] == "b"]
    assert "Loaded" not in b
    for document in documents:
        names = [metric["Name"] for metric in document["_aws"]["CloudWatchMetrics"][0]["Metrics"]]
        assert set(names) == set(document) - {"_aws", "EndpointName", "ModelName"}


class _SlowSink:
    """Blocks every write until released; records what it was given."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.objects: dict[str, bytes] = {}

    def write(self, key: str, data: bytes) -> None:
        self.release.wait()
        self.objects[key] = data

    def describe(self, key: str) -> str:
        return key


class _FailingSink:
    def write(self, key: str, data: bytes) -> None:
        raise OSError("the destination refused")

    def describe(self, key: str) -> str:
        return f"nowhere/{key}"


def test_records_are_written_in_batches_by_size_per_model_and_hour(tmp_path: Path) -> None:
    writer = CaptureWriter(DirectorySink(tmp_path), batch_bytes=100, batch_seconds=3600, buffer_bytes=10_000)
    line = b'{"r": "' + b"x" * 40 + b'"}\n'  # 50 bytes: a batch is full at two
    for _ in range(4):
        writer.add("m", WHEN, line)
    writer.add("other", WHEN, line)
    deadline = time.monotonic() + 10
    while writer.counts.objects < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    objects = sorted((tmp_path / "m" / "2026/11/26/16").glob("*.jsonl"))
    assert len(objects) == 2
    assert all(path.read_bytes() == line * 2 for path in objects)
    assert not (tmp_path / "other").exists()  # not full, and its time is not up
    counts = writer.close(timeout=10)
    assert (counts.records, counts.written, counts.dropped, counts.failed) == (5, 5, 0, 0)
    assert len(list((tmp_path / "other").rglob("*.jsonl"))) == 1


def test_a_batch_is_written_once_its_oldest_record_has_waited_long_enough(tmp_path: Path) -> None:
    now = [0.0]
    writer = CaptureWriter(
        DirectorySink(tmp_path), batch_bytes=10**6, batch_seconds=60, buffer_bytes=10**6, clock=lambda: now[0]
    )
    writer.add("m", WHEN, b"{}\n")
    time.sleep(1.5)
    assert writer.counts.objects == 0
    now[0] = 60.0
    deadline = time.monotonic() + 10
    while writer.counts.objects == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert writer.counts.written == 1
    writer.close(timeout=5)


def test_a_slow_sink_never_blocks_adding_and_loses_nothing_that_fits_the_buffer() -> None:
    sink = _SlowSink()
    writer = CaptureWriter(sink, batch_bytes=10, batch_seconds=3600, buffer_bytes=1000)
    accepted = [writer.add("m", WHEN, b'{"n": %d}\n' % i) for i in range(200)]  # the sink holds every write
    # What fits in the buffer is kept; the rest is counted, never silently lost.
    assert accepted.count(True) == writer.counts.records - writer.counts.dropped
    assert writer.counts.dropped == accepted.count(False) > 0
    sink.release.set()
    counts = writer.close(timeout=10)
    assert counts.written == accepted.count(True)
    assert counts.failed == 0
    written = b"".join(sink.objects.values()).splitlines()
    assert len(written) == accepted.count(True)


def test_a_failing_sink_counts_and_logs_what_it_loses(caplog: pytest.LogCaptureFixture) -> None:
    writer = CaptureWriter(_FailingSink(), batch_bytes=1, batch_seconds=3600, buffer_bytes=1000)
    for _ in range(3):
        writer.add("m", WHEN, b"{}\n")
    counts = writer.close(timeout=10)
    assert (counts.records, counts.written, counts.failed) == (3, 0, 3)
    assert "could not be written to nowhere/m/2026/11/26/16/" in caplog.text


def test_closing_gives_up_at_its_deadline_and_counts_what_is_left(caplog: pytest.LogCaptureFixture) -> None:
    sink = _SlowSink()  # never released
    writer = CaptureWriter(sink, batch_bytes=10**6, batch_seconds=3600, buffer_bytes=10**6)
    for _ in range(4):
        writer.add("m", WHEN, b"{}\n")
    counts = writer.close(timeout=1)
    assert counts.failed == 4
    assert "4 records were not written within 1 s of stopping" in caplog.text
    assert writer.add("m", WHEN, b"{}\n") is False  # closed: refused and counted
    sink.release.set()


def _outcome(model_name: str = "m1", target: str = "sentiment.tar.gz") -> RequestOutcome:
    return RequestOutcome(
        model_name=model_name,
        headers={"x-amzn-sagemaker-target-model": target, "content-type": "application/json"},
        body=b'{"inputs": ["x"]}',
        status=200,
        response=b"[]",
        response_type="application/json",
        received=WHEN,
        latency_seconds=0.01,
    )


@pytest.mark.parametrize("percent", [1.0, 20.0, 50.0])
def test_sampling_keeps_the_configured_share_within_binomial_bounds(percent: float) -> None:
    settings = ServingSettings.from_env({"MME_CAPTURE_DESTINATION": "/nowhere", "MME_CAPTURE_PERCENT": str(percent)})
    reporter = TelemetryReporter(settings, sampler=random.Random())
    trials = 20_000
    captured = sum(bool(reporter._capture("sentiment.tar.gz", _outcome())) for _ in range(trials))
    mean = trials * percent / 100
    deviation = (trials * percent / 100 * (1 - percent / 100)) ** 0.5
    assert abs(captured - mean) <= 5 * deviation  # fails once in 1.7 million runs


def test_per_model_shares_override_the_default_and_capture_off_captures_nothing() -> None:
    settings = ServingSettings.from_env(
        {"MME_CAPTURE_DESTINATION": "/nowhere", "MME_CAPTURE_MODEL_PERCENT": '{"sentiment.tar.gz": 0}'}
    )
    reporter = TelemetryReporter(settings)
    assert reporter._capture("sentiment.tar.gz", _outcome()) == b""
    assert reporter._capture("topic.tar.gz", _outcome(target="topic.tar.gz")) != b""
    off = TelemetryReporter(ServingSettings.from_env({}))
    assert off._capture("topic.tar.gz", _outcome(target="topic.tar.gz")) == b""


def test_the_request_id_is_the_callers_inference_id_then_the_front_ends() -> None:
    assert request_id({"x-amzn-sagemaker-inference-id": "inf-1", "x-amzn-requestid": "req-1"}) == "inf-1"
    assert request_id({"x-amzn-requestid": "req-1"}) == "req-1"
    assert len(request_id({})) == 36  # a new UUID


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("MME_CAPTURE_PERCENT", "101", "between 0 and 100"),
        ("MME_CAPTURE_PERCENT", "lots", "not a number"),
        ("MME_CAPTURE_MODEL_PERCENT", "sentiment=5", "is not JSON"),
        ("MME_CAPTURE_MODEL_PERCENT", '["a"]', "must be a JSON object"),
        ("MME_CAPTURE_MODEL_PERCENT", '{"a": true}', "the share of 'a'"),
        ("MME_CAPTURE_CONTENT", "headers", "must be one of both, inputs, outputs"),
        ("MME_CAPTURE_MAX_RECORD_BYTES", "10", ">= 1024"),
        ("MME_METRICS_ENABLED", "maybe", "must be true or false"),
    ],
)
def test_a_malformed_telemetry_setting_names_its_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=variable) as caught:
        ServingSettings.from_env({variable: value})
    assert message in str(caught.value)


def test_a_load_counts_for_the_target_model_its_first_request_names(tmp_path: Path) -> None:
    # No MMS answers on this port, so no model is listed as loaded: the figures come from the reports alone.
    out = io.StringIO()
    collector = TelemetryCollector(ServingSettings(run_dir=tmp_path, port=9), out=out)
    collector.take({"kind": "load", "model_name": "m0123abcd", "seconds": 0.25, "ok": True}, b"")
    assert collector.emit() == 0  # MMS's hash names nothing a reader knows: the load waits for its model's name
    request = {"kind": "request", "model_name": "m0123abcd", "model": "team/sentiment.tar.gz", "status": 200,
               "latency": 0.004, "model_latency": 0.003, "batch_size": 2, "received": WHEN.timestamp()}  # fmt: skip
    collector.take(request, b"")
    collector.take({**request, "status": 415, "model_latency": None, "batch_size": None}, b"")
    assert collector.emit() == 1
    (document,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert document["ModelName"] == "team/sentiment.tar.gz"
    assert (document["Invocations"], document["Errors4xx"], document["LoadTime"]) == (2, [0, 1], [250.0])
    assert (document["ModelLatency"], document["BatchSize"]) == ([3.0], [2])
