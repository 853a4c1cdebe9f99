"""Request capture from a running ``mme serve`` (the real CLI, MMS and demo models) into a moto S3 or a folder.

What the container writes is checked field by field; a destination that fails, fails at first or is slow is put
between the container and moto by :class:`local_serving.FaultyProxy` (moto stays the only stand-in for AWS).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from local_serving import FaultyProxy, MotoS3

from handler.telemetry.names import RECORD_FIELDS
from mme.serve_process import ServeProcess

BUCKET = "team-models"
CAPTURE = f"s3://{BUCKET}/capture/"
SENTENCES = ["I loved this film", "terrible service, I hated every minute"]

# Host processes are enough for what depends on the container's code; the image runs the S3 test (below).
host_only = pytest.mark.parametrize("serve", ["host"], indirect=True)


def _invoke(client: Any, model: str, body: bytes | str, **extra: Any) -> dict[str, Any]:
    return client.invoke_endpoint(
        EndpointName="local", TargetModel=model, ContentType="application/json", Body=body, **extra
    )


def _s3_records(moto_s3: MotoS3, prefix: str = "capture/") -> dict[str, list[dict[str, Any]]]:
    """Object key -> its records."""
    s3 = moto_s3.client
    records = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read().decode("utf-8")
            records[item["Key"]] = [json.loads(line) for line in body.splitlines()]
    return records


def _all(records: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [record for lines in records.values() for record in lines]


def _slowest_of_warm_requests(client: Any, count: int) -> float:
    """Load the sentiment model, then send it ``count`` requests one by one (each must answer 200); the longest
    any of them took, in seconds."""
    _invoke(client, "sentiment.tar.gz", json.dumps({"inputs": SENTENCES}))
    slowest = 0.0
    for _ in range(count):
        started = time.monotonic()
        answer = _invoke(client, "sentiment.tar.gz", json.dumps({"inputs": SENTENCES}))
        slowest = max(slowest, time.monotonic() - started)
        assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    return slowest


def _wait_for(count: Callable[[], int], expected: int, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while (seen := count()) < expected and time.monotonic() < deadline:
        time.sleep(0.5)
    return seen


@pytest.fixture
def bucket(moto_s3: MotoS3, store: Path) -> Iterator[str]:
    """The model store in the moto bucket, and a capture prefix that starts empty."""
    s3 = moto_s3.client
    if BUCKET not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=BUCKET)
        for name in ("sentiment.tar.gz", "topic.tar.gz"):
            s3.upload_file(str(store / name), BUCKET, f"models/{name}")
    yield f"s3://{BUCKET}/models/"
    for key in _s3_records(moto_s3):
        s3.delete_object(Bucket=BUCKET, Key=key)


def container_log(endpoint: ServeProcess) -> str:
    """What the container printed so far (its stdout holds the EMF lines), from the run folder of ``mme serve``."""
    logs = sorted(endpoint.tmp_dir.glob("mme-serve-*/container/serve.log"))
    return "\n".join(log.read_text(errors="replace") for log in logs)


def test_captured_records_land_in_s3_with_every_field(
    serve: Callable[..., ServeProcess], bucket: str, moto_s3: MotoS3
) -> None:
    endpoint = serve(
        bucket, "--capture", CAPTURE, "--container-env", "MME_CAPTURE_BATCH_SECONDS=1", env=moto_s3.environment
    )
    client = endpoint.client()
    started = datetime.now(UTC)
    answers = []
    for index in range(3):
        body = json.dumps({"inputs": SENTENCES})
        answer = _invoke(client, "sentiment.tar.gz", body, CustomAttributes=f"trace={index}")
        answers.append((body, answer["ResponseMetadata"]["RequestId"], answer["Body"].read().decode("utf-8")))
    with pytest.raises(client.exceptions.ModelError):
        _invoke(client, "topic.tar.gz", b'{"no_inputs": 1}')

    assert _wait_for(lambda: len(_all(_s3_records(moto_s3))), 4) == 4
    records = _s3_records(moto_s3)
    for key, lines in records.items():
        model = lines[0]["model"]
        hour = datetime.fromisoformat(lines[0]["time"].replace("Z", "+00:00"))
        assert key.startswith(f"capture/{model}/{hour:%Y/%m/%d/%H}/")
        assert key.endswith(".jsonl")
        assert all(record["model"] == model for record in lines)
    by_id = {record["request_id"]: record for record in _all(records)}

    for index, (body, request_id, output) in enumerate(answers):
        record = by_id[request_id]  # the id the caller got back is the record's
        assert tuple(record) == RECORD_FIELDS
        assert record["model"] == "sentiment.tar.gz"
        assert started - timedelta(seconds=1) <= datetime.fromisoformat(record["time"].replace("Z", "+00:00"))
        assert record["content_type"] == "application/json"
        assert (record["inputs"], record["inputs_encoding"]) == (body, "utf-8")
        assert json.loads(record["outputs"]) == json.loads(output)
        assert record["outputs_encoding"] == "utf-8"
        assert record["output_content_type"] == "application/json"
        assert record["status"] == 200
        assert 0 < record["model_latency_ms"] <= record["latency_ms"]
        assert record["custom_attributes"] == f"trace={index}"
        assert record["truncated"] is False
    (rejected,) = [record for record in by_id.values() if record["model"] == "topic.tar.gz"]
    assert rejected["status"] == 400
    assert rejected["inputs"] == '{"no_inputs": 1}'
    assert "error" in json.loads(rejected["outputs"])
    assert rejected["model_latency_ms"] is None
    assert rejected["custom_attributes"] is None


@host_only
def test_sampling_and_per_model_shares_are_honoured(
    serve: Callable[..., ServeProcess], store: Path, tmp_path: Path
) -> None:
    shares = json.dumps({"sentiment.tar.gz": 25, "topic.tar.gz": 0})
    endpoint = serve(
        store,
        "--capture", str(tmp_path / "capture"),
        "--container-env", f"MME_CAPTURE_MODEL_PERCENT={shares}",
    )  # fmt: skip
    client = endpoint.client()
    sent = 240
    for _ in range(sent):
        _invoke(client, "sentiment.tar.gz", json.dumps({"inputs": SENTENCES[:1]}))
    for model in ("topic.tar.gz", "sentiment-copy.tar.gz"):
        for _ in range(20):
            _invoke(client, model, json.dumps({"inputs": SENTENCES[:1]}))
    assert endpoint.stop() == 0  # SIGTERM: what is buffered is written

    def captured(model: str) -> int:
        return sum(len(path.read_text().splitlines()) for path in (tmp_path / "capture" / model).rglob("*.jsonl"))

    # Binomial(240, 0.25): mean 60, standard deviation 6.7; 4.5 deviations either side fails once in 150,000 runs.
    assert 30 <= captured("sentiment.tar.gz") <= 90
    assert not (tmp_path / "capture" / "topic.tar.gz").exists()  # its share is 0
    assert captured("sentiment-copy.tar.gz") == 20  # the default share is 100


@host_only
def test_a_failing_destination_never_fails_or_slows_a_request_and_what_it_loses_is_counted(
    serve: Callable[..., ServeProcess], bucket: str, moto_s3: MotoS3
) -> None:
    with FaultyProxy(moto_s3.url, fail_first=None) as proxy:
        # Only the container's S3 calls go through the proxy; the store's downloads do not.
        endpoint = serve(
            bucket, "--capture", CAPTURE,
            "--container-env", f"AWS_ENDPOINT_URL_S3={proxy.url}",
            "--container-env", "MME_CAPTURE_BATCH_SECONDS=1",
            "--container-env", "MME_CAPTURE_WRITE_ATTEMPTS=2",
            env=moto_s3.environment,
        )  # fmt: skip
        slowest = _slowest_of_warm_requests(endpoint.client(), 20)
        assert _wait_for(lambda: proxy.requests, 2) >= 2  # the writer tried, and was refused
        log = ""
        deadline = time.monotonic() + 60
        while "could not be written" not in log and time.monotonic() < deadline:
            time.sleep(0.5)
            log = container_log(endpoint)
        endpoint.stop()
    # Each request answers in milliseconds while every write fails (and a try waits out S3's backoff): none waited.
    assert slowest < 2.0
    assert "records could not be written to s3://team-models/capture/sentiment.tar.gz/" in log
    assert "and are lost" in log
    assert _s3_records(moto_s3) == {}


@host_only
def test_a_destination_failing_at_first_or_slow_loses_nothing_and_stopping_flushes_it(
    serve: Callable[..., ServeProcess], bucket: str, moto_s3: MotoS3
) -> None:
    # Two refusals, then every write waits 3 s: retried writes succeed, and requests never wait on them.
    with FaultyProxy(moto_s3.url, fail_first=2, delay_seconds=3.0) as proxy:
        endpoint = serve(
            bucket, "--capture", CAPTURE,
            "--container-env", f"AWS_ENDPOINT_URL_S3={proxy.url}",
            "--container-env", "MME_CAPTURE_BATCH_SECONDS=1",
            env=moto_s3.environment,
        )  # fmt: skip
        slowest = _slowest_of_warm_requests(endpoint.client(), 30)
        assert endpoint.stop() == 0  # writes what is still buffered within the flush time (15 s)
        assert proxy.failed == 2
    assert slowest < 2.0  # a write takes 3 s, and no request waited for one
    records = _all(_s3_records(moto_s3))
    assert len(records) == 31
    assert len({record["request_id"] for record in records}) == 31


@host_only
def test_sigterm_writes_the_records_still_waiting_for_their_batch(
    serve: Callable[..., ServeProcess], bucket: str, moto_s3: MotoS3
) -> None:
    endpoint = serve(
        bucket, "--capture", CAPTURE, "--container-env", "MME_CAPTURE_BATCH_SECONDS=600", env=moto_s3.environment
    )
    client = endpoint.client()
    for model in ("sentiment.tar.gz", "topic.tar.gz"):
        for _ in range(5):
            _invoke(client, model, json.dumps({"inputs": SENTENCES}))
    time.sleep(2)
    assert _s3_records(moto_s3) == {}  # a batch waits up to 600 s
    assert endpoint.stop() == 0
    records = _all(_s3_records(moto_s3))
    assert sorted(record["model"] for record in records) == ["sentiment.tar.gz"] * 5 + ["topic.tar.gz"] * 5


@pytest.mark.parametrize(
    ("capture", "message"),
    [("s3://", "name a bucket"), ("https://example.com/x", "give a folder or an s3://"), ("/proc/capture", "cannot")],
)
def test_a_bad_capture_destination_is_refused_before_anything_starts(
    store: Path, tmp_path: Path, capture: str, message: str
) -> None:
    answer = subprocess.run(
        [sys.executable, "-m", "mme.cli", "serve", "--store", str(store), "--cache-dir", str(tmp_path),
         "--capture", capture],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert answer.returncode == 2
    assert "--capture" in answer.stderr
    assert message in answer.stderr
    assert "Traceback" not in answer.stderr
