"""The runtime client waits out ModelNotReadyException (mme/aws/runtime.py), against a real local endpoint whose
cold loads answer 429 at once (`mme serve --load-wait-seconds 0`, as SageMaker does while a model loads)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from mme.aws.runtime import READ_TIMEOUT_SECONDS, runtime_client
from mme.serve_process import DUMMY_CREDENTIALS, ServeProcess

BODY = json.dumps({"input_text": "I loved this film"})


@pytest.fixture
def impatient_endpoint(demo_archives: dict[str, Path], tmp_path: Path) -> Iterator[ServeProcess]:
    (store,) = {path.parent for path in demo_archives.values()}
    serve = ServeProcess(store, tmp_dir=tmp_path, cache_dir=tmp_path / "cache", options=["--load-wait-seconds", "0"])
    serve.start()
    try:
        yield serve
    finally:
        serve.stop()


def _session() -> object:
    return boto3.session.Session(region_name="us-east-1", **DUMMY_CREDENTIALS)


def test_a_cold_model_is_retried_until_it_answers(impatient_endpoint: ServeProcess) -> None:
    # Control: botocore's standard retries alone give up at once (the model does not mark the error retryable).
    plain = _session().client(
        "sagemaker-runtime",
        endpoint_url=impatient_endpoint.url,
        config=Config(retries={"mode": "standard", "max_attempts": 8}),
    )
    with pytest.raises(ClientError) as raised:
        plain.invoke_endpoint(
            EndpointName="local", TargetModel="topic.tar.gz", ContentType="application/json", Body=BODY
        )
    assert raised.value.response["Error"]["Code"] == "ModelNotReadyException"
    assert raised.value.response["ResponseMetadata"]["RetryAttempts"] == 0

    client = runtime_client(_session(), endpoint_url=impatient_endpoint.url)
    attempts: list[str] = []
    client.meta.events.register("before-send.sagemaker-runtime.InvokeEndpoint", lambda **_: attempts.append("x"))
    answer = client.invoke_endpoint(
        EndpointName="local", TargetModel="sentiment.tar.gz", ContentType="application/json", Body=BODY
    )
    assert json.loads(answer["Body"].read())["label"] == "positive"
    assert len(attempts) > 1  # the first attempt met the cold load
    assert client.meta.config.read_timeout == READ_TIMEOUT_SECONDS > 60
