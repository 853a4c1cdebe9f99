"""Per-model metrics: the container's EMF lines, and the same figures as Prometheus metrics of ``mme serve``."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from local_serving import BackgroundCalls

from handler.telemetry.names import (
    BATCH_SIZE,
    ENDPOINT_DIMENSION,
    ERRORS,
    ERRORS_4XX,
    ERRORS_5XX,
    INVOCATIONS,
    LOAD_TIME,
    LOADED,
    METRIC_UNITS,
    METRICS_NAMESPACE,
    MODEL_DIMENSION,
    MODEL_LATENCY,
    TOTAL_LATENCY,
)
from mme.serve_process import ServeProcess
from mme.telemetry.figures_table import COLUMNS

GOOD = json.dumps({"inputs": ["I loved this film", "terrible service"]})
BAD = b'{"no_inputs": 1}'


def emf_documents(endpoint: ServeProcess) -> list[dict[str, Any]]:
    """Every EMF document the container printed so far (its stdout, in the run folder of ``mme serve``)."""
    documents = []
    for log in endpoint.tmp_dir.glob("mme-serve-*/container/serve.log"):
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith('{"_aws"'):
                documents.append(json.loads(line))
    return documents


def _values(documents: list[dict[str, Any]], model: str, name: str) -> list[float]:
    values: list[float] = []
    for document in documents:
        if document[MODEL_DIMENSION] == model and name in document:
            member = document[name]
            values.extend(member if isinstance(member, list) else [member])
    return values


def _send(client: Any, model: str, body: bytes | str, endpoint_name: str = "local") -> None:
    with contextlib.suppress(client.exceptions.ModelError):
        client.invoke_endpoint(EndpointName=endpoint_name, TargetModel=model, ContentType="application/json", Body=body)


def test_emf_lines_count_every_request_sent_per_model(serve: Callable[..., ServeProcess], store: Path) -> None:
    check_emf_lines_against_requests(serve, store, "shared")


@pytest.mark.parametrize("serve", ["host"], indirect=True)
def test_emf_lines_count_every_request_sent_per_model_in_per_worker_mode(
    serve: Callable[..., ServeProcess], store: Path
) -> None:
    # The reporting code is the same in the image; the host run covers the per-worker handler's side of it.
    check_emf_lines_against_requests(serve, store, "per-worker")


def check_emf_lines_against_requests(serve: Callable[..., ServeProcess], store: Path, model_host: str) -> None:
    """Send known requests to two models, then check every EMF line and their sums, and the Prometheus figures."""
    endpoint = serve(
        store,
        "--endpoint-name", "reviews",
        "--container-env", f"MME_MODEL_HOST={model_host}",
        "--container-env", "MME_METRICS_INTERVAL_SECONDS=1",
    )  # fmt: skip
    client = endpoint.client()
    for _ in range(7):
        _send(client, "sentiment.tar.gz", GOOD, "reviews")
    for _ in range(2):
        _send(client, "sentiment.tar.gz", BAD, "reviews")
    for _ in range(3):
        _send(client, "topic.tar.gz", GOOD, "reviews")

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        documents = emf_documents(endpoint)
        if sum(_values(documents, "sentiment.tar.gz", INVOCATIONS)) >= 9 and _values(
            documents, "topic.tar.gz", INVOCATIONS
        ):
            break
        time.sleep(0.5)
    time.sleep(1.5)  # a period that counted more than was sent would show now
    documents = emf_documents(endpoint)

    for document in documents:
        (directive,) = document["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == METRICS_NAMESPACE
        assert directive["Dimensions"] == [[ENDPOINT_DIMENSION, MODEL_DIMENSION]]
        assert document[ENDPOINT_DIMENSION] == "reviews"
        declared = {metric["Name"]: metric["Unit"] for metric in directive["Metrics"]}
        assert declared == {name: METRIC_UNITS[name] for name in declared}
        assert set(declared) == set(document) - {"_aws", ENDPOINT_DIMENSION, MODEL_DIMENSION}
        assert isinstance(document["_aws"]["Timestamp"], int)

    for model, answered, rejected in (("sentiment.tar.gz", 7, 2), ("topic.tar.gz", 3, 0)):
        assert sum(_values(documents, model, INVOCATIONS)) == answered + rejected
        assert sorted(_values(documents, model, ERRORS)) == [0] * answered + [1] * rejected
        assert sum(_values(documents, model, ERRORS_4XX)) == rejected
        assert sum(_values(documents, model, ERRORS_5XX)) == 0
        latencies = _values(documents, model, TOTAL_LATENCY)
        assert len(latencies) == answered + rejected
        model_latencies = _values(documents, model, MODEL_LATENCY)
        assert len(model_latencies) == answered  # a rejected request never reached the model
        assert all(0 < value < 60_000 for value in latencies + model_latencies)
        # One request at a time: each model call held that request's two texts.
        assert _values(documents, model, BATCH_SIZE) == [2] * answered
        assert len(_values(documents, model, LOAD_TIME)) == 1
        assert set(_values(documents, model, LOADED)) == {1}

    # The same figures in mme serve's Prometheus metrics, from the same EMF lines.
    assert endpoint.metric("mme_invocations_total", 'model="sentiment.tar.gz"') == 9
    assert (
        endpoint.metric("mme_invocation_errors_total", 'error="ModelError",model="sentiment.tar.gz",status_class="4xx"')
        == 2
    )
    assert endpoint.metric("mme_invocation_latency_seconds_count", 'model="sentiment.tar.gz"') == 9
    assert endpoint.metric("mme_model_latency_seconds_count", 'model="sentiment.tar.gz"') == 7
    assert endpoint.metric("mme_model_batch_size_count", 'model="topic.tar.gz"') == 3
    assert endpoint.metric("mme_model_load_seconds_count", 'model="topic.tar.gz"') == 1
    assert endpoint.metric("mme_model_loaded", 'model="topic.tar.gz"') == 1


@pytest.mark.parametrize("serve", ["host"], indirect=True)
def test_models_past_the_label_limit_are_folded_into_other(serve: Callable[..., ServeProcess], store: Path) -> None:
    endpoint = serve(store, "--metrics-max-models", "1")
    client = endpoint.client()
    _send(client, "sentiment.tar.gz", GOOD)
    _send(client, "topic.tar.gz", GOOD)
    _send(client, "sentiment-copy.tar.gz", BAD)
    assert endpoint.metric("mme_invocations_total", 'model="sentiment.tar.gz"') == 1
    assert endpoint.metric("mme_invocations_total", 'model="other"') == 2
    assert endpoint.metric("mme_invocation_errors_total", 'error="ModelError",model="other",status_class="4xx"') == 1
    assert endpoint.metric("mme_model_loaded", 'model="other"') == 2
    assert endpoint.metric("mme_model_load_seconds_count", 'model="other"') == 2
    text = requests.get(f"{endpoint.url}/metrics", timeout=10).text
    assert 'model="topic.tar.gz"' not in text
    assert 'model="sentiment-copy.tar.gz"' not in text


@pytest.mark.parametrize("serve", ["host"], indirect=True)
def test_mme_top_shows_a_running_endpoints_busiest_models(serve: Callable[..., ServeProcess], store: Path) -> None:
    endpoint = serve(store)
    client = endpoint.client()
    _send(client, "topic.tar.gz", GOOD)  # loaded, then idle
    _send(client, "sentiment.tar.gz", GOOD)
    with BackgroundCalls(
        [lambda: _send(client, "sentiment.tar.gz", GOOD), lambda: _send(client, "sentiment-copy.tar.gz", BAD)]
    ):
        answer = subprocess.run(
            [sys.executable, "-m", "mme.cli", "top", "--endpoint-url", endpoint.url, "--once", "--interval", "2"],
            capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
    assert answer.returncode == 0, answer.stderr
    rows = {
        row[0]: dict(zip(COLUMNS, row, strict=True))
        for row in ([cell.strip() for cell in line.strip("│").split("│")] for line in answer.stdout.splitlines())
        if len(row) == len(COLUMNS) and row[0] != "MODEL"
    }
    busy = rows["sentiment.tar.gz"]
    assert float(busy["REQ/S"].replace(",", "")) > 0
    assert float(busy["P50 MS"].replace(",", "")) > 0
    assert (busy["ERRORS"], busy["LOADED"]) == ("0", "yes")
    failing = rows["sentiment-copy.tar.gz"]  # every request is a 400 from the model
    assert failing["ERRORS"] == failing["4XX"] != "0"
    assert failing["ERR %"] == "100.0"
    assert failing["LOADED"] == "yes"
    idle = rows["topic.tar.gz"]
    assert (idle["REQUESTS"], idle["LOADED"]) == ("0", "yes")
    assert list(rows)[-1] == "topic.tar.gz"  # by requests per second: the idle model last
