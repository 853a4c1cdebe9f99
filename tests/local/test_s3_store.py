"""An ``s3://`` model store, served by a moto S3 server on loopback (the only fake: AWS itself)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from mme.container import free_port
from mme.serve_process import ServeProcess

AWS_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_url() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def test_models_are_downloaded_from_an_s3_prefix(serve: Callable[..., ServeProcess], store: Path, s3_url: str) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")  # fmt: skip
    s3.create_bucket(Bucket="team-models")
    for name in ("sentiment.tar.gz", "topic.tar.gz"):
        s3.upload_file(str(store / name), "team-models", f"prod/models/{name}")

    endpoint = serve("s3://team-models/prod/models/", env={**AWS_ENV, "AWS_ENDPOINT_URL": s3_url})
    client = endpoint.client()
    answer = client.invoke_endpoint(
        EndpointName="local",
        TargetModel="topic.tar.gz",
        ContentType="application/json",
        Body=json.dumps({"input_text": "the new laptop ships with a faster processor"}),
    )
    assert json.loads(answer["Body"].read())["label"] == "tech"
    assert endpoint.metric("mme_model_download_seconds_count") == 1

    with pytest.raises(client.exceptions.ValidationError) as caught:
        client.invoke_endpoint(EndpointName="local", TargetModel="missing.tar.gz", Body=b'{"input_text": "x"}')
    assert "s3://team-models/prod/models/missing.tar.gz" in caught.value.response["Error"]["Message"]
    endpoint.stop()
