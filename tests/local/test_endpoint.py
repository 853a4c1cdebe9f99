"""`mme serve` answered by an unmodified boto3 SageMaker Runtime client, like an endpoint on AWS."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from botocore.exceptions import ClientError
from local_serving import mms_front_ends, serving_containers
from typer.testing import CliRunner

from mme.cli import app
from mme.container import processes_under
from mme.serve_process import ServeProcess


@pytest.fixture(scope="module")
def endpoint(serve: Callable[..., ServeProcess], store: Path) -> ServeProcess:
    return serve(store, "--container-env", "MME_MAX_TEXTS_PER_REQUEST=8")


def _invoke(endpoint: ServeProcess, model: str, payload: object, **extra: str) -> dict:
    return endpoint.client().invoke_endpoint(
        EndpointName="local", TargetModel=model, ContentType="application/json", Body=json.dumps(payload), **extra
    )


def _error(call: Callable[[], object]) -> ClientError:
    with pytest.raises(ClientError) as caught:
        call()
    return caught.value


def test_two_models_on_one_endpoint(endpoint: ServeProcess) -> None:
    answer = _invoke(endpoint, "sentiment.tar.gz", {"input_text": "I loved this film, it was wonderful"},
                     CustomAttributes="trace=42")  # fmt: skip
    assert json.loads(answer["Body"].read())["label"] == "positive"
    assert answer["ContentType"] == "application/json"
    assert answer["InvokedProductionVariant"] == "AllTraffic"
    # Not echoed: the container sets no response headers (handler/service.py says why), and SageMaker returns
    # custom attributes only when the container sets them.
    assert "CustomAttributes" not in answer
    topic = _invoke(endpoint, "topic.tar.gz", {"inputs": ["the striker scored twice in the final match"]})
    assert [item["label"] for item in json.loads(topic["Body"].read())] == ["sports"]


def test_nested_key_under_the_prefix_is_a_model(endpoint: ServeProcess) -> None:
    answer = _invoke(endpoint, "team-a/topic-v2.tar.gz", {"input_text": "the new laptop ships with a faster processor"})
    assert json.loads(answer["Body"].read())["label"] == "tech"


def test_json_lines_through_boto3(endpoint: ServeProcess) -> None:
    body = '{"input_text": "I hated it, awful"}\n{"input_text": "wonderful, I loved it"}\n'
    answer = endpoint.client().invoke_endpoint(
        EndpointName="local", TargetModel="sentiment.tar.gz", ContentType="application/jsonlines", Body=body
    )
    assert answer["ContentType"] == "application/jsonlines"
    labels = [json.loads(line)["label"] for line in answer["Body"].read().decode().splitlines()]
    assert labels == ["negative", "positive"]


def test_unknown_endpoint_name_is_a_validation_error(endpoint: ServeProcess) -> None:
    client = endpoint.client()
    error = _error(lambda: client.invoke_endpoint(EndpointName="prod", TargetModel="sentiment.tar.gz", Body=b"{}"))
    assert isinstance(error, client.exceptions.ValidationError)
    assert "Endpoint prod not found" in error.response["Error"]["Message"]


def test_missing_target_model_is_a_validation_error(endpoint: ServeProcess) -> None:
    client = endpoint.client()
    error = _error(lambda: client.invoke_endpoint(EndpointName="local", ContentType="application/json", Body=b"{}"))
    assert isinstance(error, client.exceptions.ValidationError)
    assert "X-Amzn-SageMaker-Target-Model is required" in error.response["Error"]["Message"]


@pytest.mark.parametrize("model", ["nothing-here.tar.gz", "../sentiment.tar.gz"])
def test_unknown_or_escaping_model_is_a_validation_error(endpoint: ServeProcess, model: str) -> None:
    client = endpoint.client()
    error = _error(lambda: _invoke(endpoint, model, {"input_text": "hi"}))
    assert isinstance(error, client.exceptions.ValidationError)
    assert model in error.response["Error"]["Message"]


def test_bad_input_is_a_model_error_carrying_the_container_answer(endpoint: ServeProcess) -> None:
    client = endpoint.client()
    error = _error(lambda: _invoke(endpoint, "sentiment.tar.gz", {"inputs": ["x"] * 9}))
    assert isinstance(error, client.exceptions.ModelError)
    assert error.response["OriginalStatusCode"] == 400
    assert "at most 8" in error.response["OriginalMessage"]
    # The model keeps serving.
    assert json.loads(_invoke(endpoint, "sentiment.tar.gz", {"input_text": "I loved it"})["Body"].read())


def _load_attempts(endpoint: ServeProcess, key: str) -> int:
    """How many times mme serve asked the container to load ``key`` and was refused (its log says each)."""
    return sum(f"loading {key} answered" in line for line in endpoint.log.read_text(errors="replace").splitlines())


def test_model_that_cannot_fit_even_alone_is_refused_at_once_and_others_stay_loaded(endpoint: ServeProcess) -> None:
    client = endpoint.client()
    for model in ("sentiment.tar.gz", "topic.tar.gz"):
        assert json.loads(_invoke(endpoint, model, {"input_text": "I loved it"})["Body"].read())
    loaded, evictions = endpoint.metric("mme_loaded_models"), endpoint.metric("mme_model_evictions_total")
    loads = endpoint.metric("mme_model_loads_total")
    # Its warm-up asks TensorFlow for 4 TiB: more than the container has in total, so no eviction can help.
    error = _error(lambda: _invoke(endpoint, "greedy.tar.gz", {"input_text": "hi"}))
    assert isinstance(error, client.exceptions.ModelError)
    assert error.response["OriginalStatusCode"] == 507
    message = error.response["Error"]["Message"]
    assert "greedy.tar.gz does not fit in the container's memory even with no other model loaded" in message
    assert "more than the container's" in message
    assert endpoint.metric("mme_loaded_models") == loaded >= 2
    assert endpoint.metric("mme_model_evictions_total") == evictions
    assert _load_attempts(endpoint, "greedy.tar.gz") == 1
    # A retry is refused at once: no load attempt, no eviction.
    again = _error(lambda: _invoke(endpoint, "greedy.tar.gz", {"input_text": "hi"}))
    assert isinstance(again, client.exceptions.ModelError)
    assert again.response["Error"]["Message"] == message
    assert _load_attempts(endpoint, "greedy.tar.gz") == 1
    assert "refused greedy.tar.gz at once" in endpoint.log.read_text(errors="replace")
    assert endpoint.metric("mme_model_evictions_total") == evictions
    # The other models keep serving, still loaded.
    answer = _invoke(endpoint, "topic.tar.gz", {"input_text": "simmer the garlic and tomatoes for the pasta sauce"})
    assert json.loads(answer["Body"].read())["label"] == "food"
    assert endpoint.metric("mme_model_loads_total") == loads


def test_a_model_refused_as_too_large_is_tried_again_once_the_refusal_expires(
    serve: Callable[..., ServeProcess], store: Path
) -> None:
    short = serve(store, "--too-large-seconds", "0")
    client = short.client()
    for attempt in (1, 2):
        assert isinstance(_error(lambda: _invoke(short, "greedy.tar.gz", {"input_text": "hi"})),
                          client.exceptions.ModelError)  # fmt: skip
        assert _load_attempts(short, "greedy.tar.gz") == attempt
    short.stop()


def test_model_out_of_memory_at_predict_is_a_model_error_after_making_room(endpoint: ServeProcess) -> None:
    client = endpoint.client()
    assert _invoke(endpoint, "sentiment.tar.gz", {"input_text": "I loved it"})["ResponseMetadata"]
    evictions = endpoint.metric("mme_model_evictions_total")
    long_text = "this sentence is long enough to need more than twelve tokens once it is tokenized"
    error = _error(lambda: _invoke(endpoint, "greedy-on-long.tar.gz", {"input_text": long_text}))
    assert isinstance(error, client.exceptions.ModelError)
    assert error.response["OriginalStatusCode"] == 507
    # Like SageMaker, the front end unloaded another model and retried once before giving up.
    assert endpoint.metric("mme_model_evictions_total") == evictions + 1
    assert json.loads(_invoke(endpoint, "greedy-on-long.tar.gz", {"input_text": "short"})["Body"].read())


def test_mme_invoke_prints_the_prediction_and_names_errors(endpoint: ServeProcess, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["invoke", "--endpoint-url", endpoint.url, "--endpoint", "local"]
    answer = runner.invoke(app, [*base, "--model", "topic.tar.gz", "--text", "the striker scored twice in the final"])
    assert answer.exit_code == 0, answer.output
    assert json.loads(answer.output)["label"] == "sports"
    lines = tmp_path / "batch.jsonl"
    lines.write_text('{"input_text": "I loved it, wonderful"}\n{"input_text": "awful, I hated it"}\n')
    batch = runner.invoke(app, [*base, "--model", "sentiment.tar.gz", "--file", str(lines)])
    assert batch.exit_code == 0, batch.output
    assert [json.loads(line)["label"] for line in batch.output.splitlines()] == ["positive", "negative"]
    unknown = runner.invoke(app, [*base, "--model", "not-in-the-store.tar.gz", "--text", "hi"])
    assert unknown.exit_code == 2
    assert "ValidationError" in unknown.output
    neither = runner.invoke(app, [*base, "--model", "topic.tar.gz"])
    assert neither.exit_code == 2
    assert "exactly one of --text and --file" in neither.output


@pytest.mark.parametrize("model", ["escape.tar.gz", "symlink.tar.gz"])
def test_hostile_archive_is_refused_and_nothing_is_written_outside_the_cache(
    endpoint: ServeProcess, store: Path, model: str
) -> None:
    client = endpoint.client()
    error = _error(lambda: _invoke(endpoint, model, {"input_text": "hi"}))
    assert isinstance(error, client.exceptions.ValidationError)
    assert "refused" in error.response["Error"]["Message"]
    assert not list(endpoint.tmp_dir.rglob("escaped.txt"))
    assert not list(store.parent.rglob("escaped.txt"))
    assert not any(path.is_symlink() for path in endpoint.cache_dir.rglob("*"))


def test_concurrent_first_invocations_cause_exactly_one_load(endpoint: ServeProcess) -> None:
    loads_before = endpoint.metric("mme_model_loads_total")
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda _: _invoke(endpoint, "sentiment-copy.tar.gz", {"input_text": "awful, I hated it"}), range(8)
            )
        )
    assert [json.loads(answer["Body"].read())["label"] for answer in answers] == ["negative"] * 8
    assert endpoint.metric("mme_model_loads_total") == loads_before + 1


def test_metrics_count_invocations_errors_and_loaded_models(endpoint: ServeProcess) -> None:
    assert endpoint.metric("mme_invocations_total", 'model="sentiment.tar.gz"') >= 1
    assert (
        endpoint.metric(
            "mme_invocation_errors_total", 'error="ValidationError",model="nothing-here.tar.gz",status_class="4xx"'
        )
        == 1
    )
    # Only the out-of-memory prediction evicted: the model that never fits was refused without evicting anything.
    assert endpoint.metric("mme_model_evictions_total") == 1
    assert endpoint.metric("mme_loaded_models") >= 2
    assert endpoint.metric("mme_cache_hits_total") >= 1
    assert endpoint.metric("mme_cache_misses_total") >= 3
    assert endpoint.metric_sum("mme_model_load_seconds_count") >= 3  # labelled per model


def test_dead_container_is_service_unavailable_then_restarted(endpoint: ServeProcess) -> None:
    client = endpoint.client()
    java = mms_front_ends()  # one MMS at a time runs in these tests: this endpoint's, on the host or in its image
    assert java, "no MMS front end found"
    for process in java:
        process.send_signal(signal.SIGKILL)
    psutil.wait_procs(java, timeout=10)
    error = _error(lambda: _invoke(endpoint, "sentiment.tar.gz", {"input_text": "I loved it"}))
    assert isinstance(error, client.exceptions.ServiceUnavailable)
    deadline = time.monotonic() + 120
    while True:
        try:
            answer = _invoke(endpoint, "sentiment.tar.gz", {"input_text": "I loved it, wonderful"})
            break
        except client.exceptions.ServiceUnavailable:
            assert time.monotonic() < deadline, "the container was not restarted"
            time.sleep(0.5)
    assert json.loads(answer["Body"].read())["label"] == "positive"


def test_sigint_stops_everything_and_the_cache_stays_usable(
    serve: Callable[..., ServeProcess], store: Path, endpoint: ServeProcess
) -> None:
    containers_before = set(serving_containers())
    first = serve(store)
    started_containers = set(serving_containers()) - containers_before
    assert json.loads(_invoke(first, "topic.tar.gz", {"input_text": "a cheap flight and a hotel"})["Body"].read())
    assert first.stop(signal.SIGINT) == 0
    assert processes_under(first.tmp_dir) == []
    assert started_containers.isdisjoint(serving_containers()), "the stopped endpoint's container is still there"
    again = serve(store, "--cache-dir", str(first.cache_dir))
    answer = _invoke(again, "topic.tar.gz", {"input_text": "we booked a cheap flight and a hotel by the beach"})
    assert json.loads(answer["Body"].read())["label"] == "travel"
    # The extracted model was reused: nothing was downloaded again.
    assert again.metric("mme_model_download_seconds_count") == 0
    assert again.stop(signal.SIGTERM) == 0
    assert os.listdir(first.cache_dir / "downloads") == []
