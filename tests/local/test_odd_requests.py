"""Odd requests that once gave a 5xx or held a connection: each is a 4xx naming the problem, and the endpoint answers
the next request (on host processes and on the image)."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from local_serving import mms_workers

from mme.serve_process import ServeProcess

GOOD = json.dumps({"input_text": "I loved this film"})


@pytest.fixture(scope="module")
def endpoint(serve: Callable[..., ServeProcess], store: Path) -> ServeProcess:
    return serve(store, "--body-timeout-seconds", "1")


def _still_answers(endpoint: ServeProcess) -> None:
    answer = endpoint.client().invoke_endpoint(
        EndpointName="local", TargetModel="sentiment.tar.gz", ContentType="application/json", Body=GOOD
    )
    assert json.loads(answer["Body"].read())["label"] == "positive"


def _error(endpoint: ServeProcess, model: str, body: bytes) -> ClientError:
    with pytest.raises(ClientError) as caught:
        endpoint.client().invoke_endpoint(
            EndpointName="local", TargetModel=model, ContentType="application/json", Body=body
        )
    return caught.value


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"input_text": "\\ud800"}', "lone surrogate"),
        (b'{"input_text": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
    ],
)
def test_text_the_tokenizer_cannot_take_is_a_400_from_the_container(
    endpoint: ServeProcess, body: bytes, fragment: str
) -> None:
    error = _error(endpoint, "sentiment.tar.gz", body)
    assert error.response["Error"]["Code"] == "ModelError"
    assert error.response["OriginalStatusCode"] == 400
    assert fragment in error.response["OriginalMessage"]
    _still_answers(endpoint)


@pytest.mark.parametrize(("length", "fragment"), [(256, "could not find model data"), (1025, "at most 1024")])
def test_an_over_long_target_model_is_a_validation_error(endpoint: ServeProcess, length: int, fragment: str) -> None:
    error = _error(endpoint, "m" * (length - len(".tar.gz")) + ".tar.gz", GOOD.encode())
    assert error.response["Error"]["Code"] == "ValidationError"
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert fragment in error.response["Error"]["Message"]
    _still_answers(endpoint)


def test_a_body_that_stalls_after_its_headers_gets_a_408_not_a_held_connection(endpoint: ServeProcess) -> None:
    port = int(endpoint.url.rsplit(":", 1)[1])
    head = (
        "POST /endpoints/local/invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"X-Amzn-SageMaker-Target-Model: sentiment.tar.gz\r\nContent-Length: {len(GOOD)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(head.encode() + GOOD[:5].encode())  # then nothing
        # The server answers first (a client-side timeout would raise here instead).
        answer = connection.recv(65536).decode()
    status_line, _, rest = answer.partition("\r\n")
    assert status_line.split()[1] == "408", answer
    assert "did not arrive within 1 s" in rest
    _still_answers(endpoint)


def test_long_custom_attributes_never_kill_the_worker(endpoint: ServeProcess) -> None:
    # SageMaker allows 1024 characters; echoing them back once made MMS drop the worker every few requests.
    client = endpoint.client()
    echoed = []
    for length in (1024, 20, 600, 1024, 5, 1024, 442, 1024) * 3:
        answer = client.invoke_endpoint(
            EndpointName="local",
            TargetModel="sentiment.tar.gz",
            ContentType="application/json",
            Body=GOOD,
            CustomAttributes="a" * length,
        )
        assert json.loads(answer["Body"].read())["label"] == "positive"
        echoed.append(answer.get("CustomAttributes"))
    assert echoed == [None] * len(echoed)


def test_an_error_quoting_non_ascii_request_text_is_a_400_and_the_worker_lives(endpoint: ServeProcess) -> None:
    # The reason for this 400 quotes the request's keys; MMS once framed a non-ASCII reason wrongly and killed the
    # worker ("Worker died", a 500).
    _still_answers(endpoint)
    workers = mms_workers()
    for body in ('{"\u00a1": null}', '{"prénom": "Zoë", "日本": 1}'):
        error = _error(endpoint, "sentiment.tar.gz", body.encode())
        assert error.response["OriginalStatusCode"] == 400
        reason = json.loads(error.response["OriginalMessage"])["error"]
        assert all(repr(key) in reason for key in json.loads(body)), reason
        _still_answers(endpoint)
    assert workers <= mms_workers(), "a worker died"


def test_a_failed_load_leaves_nothing_in_the_cache(endpoint: ServeProcess) -> None:
    models = endpoint.cache_dir / "models"
    _still_answers(endpoint)
    before = {path.name for path in models.iterdir()}
    error = _error(endpoint, "greedy.tar.gz", GOOD.encode())  # extracts, then runs out of memory at its load
    assert error.response["Error"]["Code"] == "ModelError"
    assert {path.name for path in models.iterdir()} == before
    _still_answers(endpoint)
