"""`mme serve --image --memory`: more models than fit in the container, and every request still succeeds, as on a
SageMaker instance: the image answers 507, the front end unloads the least recently used model and retries."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from mme.serve_process import ServeProcess

KEYS = [f"sentiment-{index}.tar.gz" for index in range(6)]


@pytest.fixture
def endpoint(serving_image: str, demo_archives: dict[str, Path], tmp_path: Path) -> Iterator[ServeProcess]:
    store = tmp_path / "store"
    store.mkdir()
    for key in KEYS:
        shutil.copy2(demo_archives["sentiment"], store / key)
    options = ["--image", serving_image, "--memory", "1g"]
    server = ServeProcess(store, tmp_dir=tmp_path / "serve", cache_dir=tmp_path / "cache", options=options)
    with server:
        yield server


def test_more_models_than_fit_all_answer_through_507_and_eviction(endpoint: ServeProcess) -> None:
    client = endpoint.client()
    for key in KEYS * 2:
        answer = client.invoke_endpoint(
            EndpointName="local", TargetModel=key, ContentType="application/json",
            Body=json.dumps({"input_text": "awful, I hated it"}),
        )  # fmt: skip
        assert json.loads(answer["Body"].read())["label"] == "negative"
    assert endpoint.metric("mme_model_evictions_total") >= len(KEYS)
    assert 1 <= endpoint.metric("mme_loaded_models") < len(KEYS)
