"""What stays loaded: a model budget, a memory budget, a disabled cache, and slow loads (429)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from mme.serve_process import ServeProcess

ROUND_ROBIN = ["sentiment.tar.gz", "topic.tar.gz", "sentiment-copy.tar.gz"] * 3


def _label(endpoint: ServeProcess, model: str, text: str) -> str:
    answer = endpoint.client().invoke_endpoint(
        EndpointName="local", TargetModel=model, ContentType="text/plain", Body=text
    )
    return json.loads(answer["Body"].read())["label"]


def _round_robin(endpoint: ServeProcess) -> None:
    for model in ROUND_ROBIN:
        expected = "sports" if model.startswith("topic") else "positive"
        text = "the striker scored twice in the final match" if expected == "sports" else "I loved it, wonderful"
        assert _label(endpoint, model, text) == expected


def test_budget_of_one_model_round_robin_over_three_all_succeed(
    serve: Callable[..., ServeProcess], store: Path
) -> None:
    endpoint = serve(store, "--max-loaded-models", "1")
    _round_robin(endpoint)
    assert endpoint.metric("mme_loaded_models") == 1
    assert endpoint.metric("mme_model_loads_total") == len(ROUND_ROBIN)
    assert endpoint.metric("mme_model_evictions_total") == len(ROUND_ROBIN) - 1
    endpoint.stop()


def test_memory_budget_below_two_models_keeps_one_loaded(serve: Callable[..., ServeProcess], store: Path) -> None:
    # One worker with TensorFlow takes a few hundred MB: 1 byte lets only one model stay.
    endpoint = serve(store, "--memory-budget", "1")
    _round_robin(endpoint)
    assert endpoint.metric("mme_loaded_models") == 1
    assert endpoint.metric("mme_model_evictions_total") == len(ROUND_ROBIN) - 1
    endpoint.stop()


def test_disabled_model_cache_unloads_after_every_invocation(serve: Callable[..., ServeProcess], store: Path) -> None:
    endpoint = serve(store, "--model-cache", "disabled")
    assert _label(endpoint, "sentiment.tar.gz", "I loved it, wonderful") == "positive"
    assert _label(endpoint, "sentiment.tar.gz", "awful, I hated every minute") == "negative"
    assert endpoint.metric("mme_loaded_models") == 0
    assert endpoint.metric("mme_model_loads_total") == 2
    assert endpoint.metric("mme_model_unloads_total") == 2
    assert endpoint.metric("mme_model_evictions_total") == 0
    endpoint.stop()


def test_request_during_a_slow_load_is_model_not_ready_and_the_load_goes_on(
    serve: Callable[..., ServeProcess], store: Path
) -> None:
    endpoint = serve(store, "--load-wait-seconds", "0.05")
    client = endpoint.client()
    with pytest.raises(ClientError) as caught:
        client.invoke_endpoint(EndpointName="local", TargetModel="topic.tar.gz", ContentType="text/plain", Body="x")
    assert isinstance(caught.value, client.exceptions.ModelNotReadyException)
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    deadline = time.monotonic() + 60
    while endpoint.metric("mme_loaded_models") < 1:
        assert time.monotonic() < deadline, "the load did not finish in the background"
        time.sleep(0.25)
    assert _label(endpoint, "topic.tar.gz", "simmer the garlic and tomatoes for the pasta sauce") == "food"
    endpoint.stop()


def test_malformed_options_are_cli_errors(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mme.cli import app

    runner = CliRunner()
    bad_size = runner.invoke(app, ["serve", "--store", str(tmp_path), "--memory-budget", "lots"])
    assert bad_size.exit_code == 2
    assert "is not a size" in bad_size.output
    missing = runner.invoke(app, ["serve", "--store", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2
    assert "does not exist" in missing.output
    bad_uri = runner.invoke(app, ["serve", "--store", "s3://"])
    assert bad_uri.exit_code == 2
    assert "is not an s3://bucket/prefix/ URI" in bad_uri.output
