"""Models as users already have them, served by real MMS through the container's entrypoint: answers equal the
model's own outputs, a client of the old hand-made endpoint reads the same answer, and a failed load says why."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from keras_models import CASES, original_outputs

from handler.settings import load_error_file
from mme.archive import extract_archive
from mme.container import LocalContainer, processes_under

SHORT = "a fine film"
LONG = "we booked a cheap flight and a hotel by the beach for the whole family " * 15
TEXTS = [SHORT, LONG, "simmer the garlic and tomatoes"]


@pytest.fixture(scope="module")
def container(demo_tokenizer: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalContainer]:
    run_dir = tmp_path_factory.mktemp("mms-keras")
    server = LocalContainer(run_dir, environment={"MME_DEFAULT_TOKENIZER_DIR": str(demo_tokenizer)})
    with server:
        yield server
    assert processes_under(run_dir) == [], "an MMS or worker process outlived the server"


@pytest.fixture(scope="module")
def model_dirs(keras_archives: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mms-keras-models")
    return {name: extract_archive(archive, root / name) for name, archive in keras_archives.items()}


def _invoke(container: LocalContainer, model: str, payload: object) -> object:
    answer = container.client.invoke(model, json.dumps(payload))
    assert answer.status == 200, answer.body
    return answer.json()


@pytest.mark.parametrize("name", sorted(CASES))
def test_answers_equal_the_models_own_outputs(
    name: str,
    container: LocalContainer,
    model_dirs: dict[str, Path],
    keras_models: dict[str, Path],
    demo_tokenizer: Path,
) -> None:
    case = CASES[name]
    loaded = container.client.load(name, model_dirs[name])
    assert loaded.status == 200, loaded.body
    try:
        length = case.static_length or 64  # the demo tokenizer's model_max_length caps a dynamic signature
        expected = original_outputs(case, keras_models[name], demo_tokenizer, TEXTS, max_length=length)
        kind = "probabilities" if case.activation else "logits"
        answers = _invoke(container, name, {"inputs": TEXTS})
        assert [answer[kind] for answer in answers] == [pytest.approx(row, abs=1e-5) for row in expected]
        single = _invoke(container, name, {"input_text": LONG})
        assert single[kind] == pytest.approx(expected[1], abs=1e-5)
        if case.activation == "softmax":
            assert list(single["scores"].values()) == pytest.approx(expected[1], abs=1e-5)
    finally:
        assert container.client.unload(name).status == 200


def test_zero_only_archive_is_served_with_the_default_tokenizer(
    container: LocalContainer, keras_models: dict[str, Path], demo_tokenizer: Path, tmp_path: Path
) -> None:
    original = shutil.copytree(keras_models["static64"], tmp_path / "original")
    assert container.client.load("original", original).status == 200
    expected = original_outputs(CASES["static64"], original, demo_tokenizer, [SHORT], max_length=64)
    assert _invoke(container, "original", {"input_text": SHORT})["probabilities"] == pytest.approx(
        expected[0], abs=1e-5
    )
    assert container.client.unload("original").status == 200


def test_raw_answers_are_what_the_original_handler_answered(
    container: LocalContainer, model_dirs: dict[str, Path], keras_models: dict[str, Path], demo_tokenizer: Path
) -> None:
    legacy = shutil.copytree(model_dirs["static64"], model_dirs["static64"].parent / "legacy")
    (legacy / "mme.json").write_text(json.dumps({"response_format": "raw"}))
    assert container.client.load("legacy", legacy).status == 200
    expected = original_outputs(CASES["static64"], keras_models["static64"], demo_tokenizer, TEXTS, max_length=64)
    # The old client: json.loads(body) is the output row of the first text.
    body = container.client.invoke("legacy", json.dumps({"input_text": SHORT})).body
    assert json.loads(body) == pytest.approx(expected[0], abs=1e-5)
    assert _invoke(container, "legacy", {"inputs": TEXTS}) == [pytest.approx(row, abs=1e-5) for row in expected]
    assert container.client.unload("legacy").status == 200


def test_a_failed_load_leaves_the_handlers_reason_in_the_log_and_for_the_front_end(
    container: LocalContainer, keras_models: dict[str, Path]
) -> None:
    answer = container.client.load("unbound", keras_models["custom_names"])
    assert answer.status >= 400
    container.client.discard("unbound")
    left = json.loads(load_error_file(container.run_dir, "unbound").read_text())
    assert left["exceeds_total_memory"] is False  # not a matter of memory: evicting others would not help either
    reason = left["reason"]
    assert "nothing is bound to 'tokens', 'valid'" in reason
    assert '"inputs": {"tokens": "input_ids", "valid": "attention_mask"}' in reason
    # The container's output is the endpoint's CloudWatch log on AWS.
    assert any("cannot load model unbound: " in line and "nothing is bound" in line for line in container.log_lines())
