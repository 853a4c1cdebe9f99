"""`GET /models` on `mme serve` (not SageMaker's; read-only) and `mme models --endpoint-url`: the store's archives and
which the endpoint has loaded."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from local_serving import MotoS3
from typer.testing import CliRunner

from mme.cli import app
from mme.serve_process import ServeProcess


@pytest.fixture(scope="module")
def listing_store(demo_archives: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two archives (one in a subfolder) and a file that is not an archive."""
    root = tmp_path_factory.mktemp("listing-store")
    shutil.copy2(demo_archives["sentiment"], root / "sentiment.tar.gz")
    (root / "team-a").mkdir()
    shutil.copy2(demo_archives["topic"], root / "team-a" / "topic-v2.tar.gz")
    (root / "notes.txt").write_text("not a model")
    return root


def _stat(path: Path) -> tuple[int, str]:
    status = path.stat()
    return status.st_size, datetime.fromtimestamp(status.st_mtime, UTC).isoformat()


def test_models_route_and_mme_models_show_what_is_loaded(
    serve: Callable[..., ServeProcess], listing_store: Path
) -> None:
    endpoint = serve(listing_store)
    size, modified = _stat(listing_store / "sentiment.tar.gz")
    topic_size, topic_modified = _stat(listing_store / "team-a" / "topic-v2.tar.gz")

    before = requests.get(f"{endpoint.url}/models", timeout=30)
    assert before.status_code == 200
    assert before.json() == {
        "models": [
            {"target_model": "sentiment.tar.gz", "size": size, "last_modified": modified, "loaded": False},
            {"target_model": "team-a/topic-v2.tar.gz", "size": topic_size, "last_modified": topic_modified,
             "loaded": False},
        ]
    }  # fmt: skip

    answer = endpoint.client().invoke_endpoint(
        EndpointName="local", TargetModel="sentiment.tar.gz", ContentType="application/json",
        Body=json.dumps({"input_text": "I loved this film, it was wonderful"}),
    )  # fmt: skip
    assert json.loads(answer["Body"].read())["label"] == "positive"

    result = CliRunner().invoke(app, ["models", "--endpoint-url", endpoint.url])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{endpoint.url}: 2 model archives\n")
    rows = [re.split(r" {2,}", line.strip()) for line in result.output.splitlines()[1:]]
    assert rows[0] == ["TARGETMODEL", "SIZE", "LAST MODIFIED (UTC)", "LOADED"]
    assert [(row[0], row[3]) for row in rows[1:]] == [("sentiment.tar.gz", "yes"), ("team-a/topic-v2.tar.gz", "no")]
    assert rows[1][1] == f"{size / 1000:.1f} kB"
    endpoint.stop()


def test_models_route_lists_an_s3_store(
    serve: Callable[..., ServeProcess], listing_store: Path, moto_s3: MotoS3
) -> None:
    s3 = moto_s3.client
    s3.create_bucket(Bucket="listed-models")
    for key in ("sentiment.tar.gz", "team-a/topic-v2.tar.gz", "notes.txt"):
        s3.upload_file(str(listing_store / key), "listed-models", f"prod/models/{key}")
    s3.upload_file(str(listing_store / "sentiment.tar.gz"), "listed-models", "prod/other/sentiment.tar.gz")

    endpoint = serve("s3://listed-models/prod/models/", env=moto_s3.environment)
    listing = requests.get(f"{endpoint.url}/models", timeout=30).json()["models"]

    assert [(model["target_model"], model["size"], model["loaded"]) for model in listing] == [
        ("sentiment.tar.gz", (listing_store / "sentiment.tar.gz").stat().st_size, False),
        ("team-a/topic-v2.tar.gz", (listing_store / "team-a" / "topic-v2.tar.gz").stat().st_size, False),
    ]
    head = s3.head_object(Bucket="listed-models", Key="prod/models/sentiment.tar.gz")
    assert datetime.fromisoformat(listing[0]["last_modified"]) == head["LastModified"]
    endpoint.stop()
