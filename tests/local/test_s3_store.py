"""An ``s3://`` model store, served by a moto S3 server on loopback (the only fake: AWS itself)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from local_serving import MotoS3

from mme.serve_process import ServeProcess


def test_models_are_downloaded_from_an_s3_prefix(
    serve: Callable[..., ServeProcess], store: Path, moto_s3: MotoS3
) -> None:
    s3 = moto_s3.client
    s3.create_bucket(Bucket="team-models")
    for name in ("sentiment.tar.gz", "topic.tar.gz"):
        s3.upload_file(str(store / name), "team-models", f"prod/models/{name}")

    endpoint = serve("s3://team-models/prod/models/", env=moto_s3.environment)
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
