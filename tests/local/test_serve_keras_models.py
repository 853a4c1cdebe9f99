"""Models as users already have them, behind `mme serve` and an unmodified boto3 client: the model's own answers,
a `0/`-only archive served with the default tokenizer, and a failed load whose reason reaches the caller."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from keras_models import CASES, original_outputs

from mme.archive import write_archive
from mme.serve_process import ServeProcess

TEXTS = ["a fine film", "the striker scored twice in the final match and the crowd sang all night long " * 12]


@pytest.fixture(scope="module")
def keras_store(
    keras_archives: dict[str, Path], keras_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    root = tmp_path_factory.mktemp("keras-store")
    for name in ("static64", "tfhub"):
        shutil.copy2(keras_archives[name], root / f"{name}.tar.gz")
    write_archive(keras_models["static64"], root / "original.tar.gz")  # 0/ only, as the hand-made setup left it
    write_archive(keras_models["custom_names"], root / "custom.tar.gz")  # inputs nobody bound
    return root


@pytest.fixture(scope="module")
def endpoint(serve: Callable[..., ServeProcess], keras_store: Path, demo_tokenizer: Path) -> ServeProcess:
    return serve(keras_store, "--default-tokenizer", str(demo_tokenizer))


def _answer(endpoint: ServeProcess, key: str, payload: object) -> object:
    answer = endpoint.client().invoke_endpoint(
        EndpointName="local", TargetModel=key, ContentType="application/json", Body=json.dumps(payload)
    )
    return json.loads(answer["Body"].read())


@pytest.mark.parametrize(("key", "case", "kind"), [("static64.tar.gz", "static64", "probabilities"),
                                                   ("tfhub.tar.gz", "tfhub", "logits"),
                                                   ("original.tar.gz", "static64", "probabilities")])  # fmt: skip
def test_boto3_gets_the_models_own_outputs(
    endpoint: ServeProcess,
    keras_models: dict[str, Path],
    demo_tokenizer: Path,
    key: str,
    case: str,
    kind: str,
) -> None:
    expected = original_outputs(CASES[case], keras_models[case], demo_tokenizer, TEXTS, max_length=64)
    answers = _answer(endpoint, key, {"inputs": TEXTS})
    assert [answer[kind] for answer in answers] == [pytest.approx(row, abs=1e-5) for row in expected]


def test_a_failed_load_tells_the_boto3_caller_why(endpoint: ServeProcess) -> None:
    with pytest.raises(ClientError) as caught:
        _answer(endpoint, "custom.tar.gz", {"input_text": "hello"})
    error = caught.value.response["Error"]
    assert error["Code"] == "ModelError"
    assert "could not load model custom.tar.gz" in error["Message"]
    assert "nothing is bound to 'tokens', 'valid'" in error["Message"]
    assert '"inputs": {"tokens": "input_ids", "valid": "attention_mask"}' in error["Message"]
