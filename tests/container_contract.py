"""The SageMaker multi-model container contract (DESIGN.md), for any runtime of the container.

A test module imports these tests and provides a module-scoped ``container`` fixture (a started
:class:`~mme.container.LocalContainer`, or an image on the Docker engine); the same cases then run against it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mme.container import LocalContainer


@pytest.fixture(scope="module")
def loaded(container: LocalContainer, demo_model_dirs: dict[str, Path]) -> LocalContainer:
    for name, model_dir in demo_model_dirs.items():
        answer = container.client.load(name, model_dir)
        assert answer.status == 200, answer.body
    return container


def _invoke_json(container: LocalContainer, model: str, payload: object) -> object:
    answer = container.client.invoke(model, json.dumps(payload))
    assert answer.status == 200, answer.body
    assert answer.content_type.startswith("application/json")
    return answer.json()


def test_ping_is_healthy(container: LocalContainer) -> None:
    assert container.client.ping().status == 200


def test_loaded_models_answer_with_expected_labels(loaded: LocalContainer) -> None:
    positive = _invoke_json(loaded, "sentiment", {"input_text": "I loved this film, it was wonderful"})
    negative = _invoke_json(loaded, "sentiment", {"input_text": "terrible service, I hated every minute"})
    assert (positive["label"], negative["label"]) == ("positive", "negative")
    assert set(positive["scores"]) == {"negative", "positive"}
    assert len(positive["logits"]) == 2
    topics = _invoke_json(
        loaded,
        "topic",
        {
            "inputs": [
                "the striker scored twice in the final match",
                "the new laptop ships with a faster processor",
                "simmer the garlic and tomatoes for the pasta sauce",
                "we booked a cheap flight and a hotel by the beach",
            ]
        },
    )
    assert [item["label"] for item in topics] == ["sports", "tech", "food", "travel"]


def test_plain_text_is_accepted(loaded: LocalContainer) -> None:
    answer = loaded.client.invoke("sentiment", "what a wonderful day, I loved it", content_type="text/plain")
    assert answer.status == 200
    assert answer.json()["label"] == "positive"


def test_json_lines_request_answers_every_line_in_order(loaded: LocalContainer) -> None:
    body = "\n".join(
        json.dumps(record)
        for record in (
            {"input_text": "I hated it, awful"},
            {"inputs": ["wonderful, I loved it", "terrible and boring"]},
        )
    )
    answer = loaded.client.invoke("sentiment", body, content_type="application/jsonlines")
    assert answer.status == 200
    assert answer.content_type.startswith("application/jsonlines")
    first, second = (json.loads(line) for line in answer.body.decode().splitlines())
    assert first["label"] == "negative"
    assert [item["label"] for item in second] == ["positive", "negative"]


def test_duplicate_load_returns_409(loaded: LocalContainer, demo_model_dirs: dict[str, Path]) -> None:
    assert loaded.client.load("sentiment", demo_model_dirs["sentiment"]).status == 409


def test_load_of_missing_url_returns_404(container: LocalContainer, tmp_path: Path) -> None:
    assert container.client.load("ghost", tmp_path / "does-not-exist").status == 404


def test_list_is_paginated_and_describe_names_the_model(loaded: LocalContainer) -> None:
    everything = {model["modelName"] for model in loaded.client.list_models().json()["models"]}
    assert {"sentiment", "topic"} <= everything
    paged: list[str] = []
    token = None
    for _ in range(len(everything) + 1):
        page = loaded.client.list_models(limit=1, next_page_token=token).json()
        assert len(page["models"]) <= 1
        paged += [model["modelName"] for model in page["models"]]
        token = page.get("nextPageToken")
        if not token:
            break
    assert sorted(paged) == sorted(everything)
    described = loaded.client.describe("topic")
    assert described.status == 200
    assert "topic" in described.body.decode()
    assert loaded.client.describe("nobody").status == 404


@pytest.mark.parametrize(
    ("body", "content_type", "status", "fragment"),
    [
        ("{broken", "application/json", 400, "not valid JSON"),
        ('{"text": "x"}', "application/json", 400, '"input_text" or "inputs"'),
        ('{"input_text": ""}', "application/json", 400, "empty"),
        (json.dumps({"inputs": ["a"] * 9}), "application/json", 400, "at most 8"),
        ("<x/>", "application/xml", 415, "application/xml"),
    ],
)
def test_bad_input_is_4xx_with_a_message_and_the_next_request_succeeds(
    loaded: LocalContainer, body: str, content_type: str, status: int, fragment: str
) -> None:
    answer = loaded.client.invoke("sentiment", body, content_type=content_type)
    assert answer.status == status
    assert fragment in answer.json()["error"]
    assert loaded.client.invoke("sentiment", '{"input_text": "I loved it"}').status == 200


def test_unsupported_accept_is_406(loaded: LocalContainer) -> None:
    answer = loaded.client.invoke("sentiment", '{"input_text": "fine"}', accept="text/csv")
    assert answer.status == 406
    assert "text/csv" in answer.json()["error"]


def test_invoking_an_unknown_model_returns_404(container: LocalContainer) -> None:
    assert container.client.invoke("never-loaded", '{"input_text": "hi"}').status == 404


def test_model_out_of_memory_at_load_returns_507_and_others_keep_serving(
    loaded: LocalContainer, oom_model_dir: Path
) -> None:
    assert loaded.client.load("greedy", oom_model_dir).status == 507
    # Its warm-up asks for 4 TiB, more than any container here has: the handler tells the front end that unloading
    # other models cannot help.
    left = json.loads(loaded.load_error_file("greedy").read_text())
    assert left["exceeds_total_memory"] is True
    assert "more than the container's" in left["reason"]
    # MMS may put a model back, with no workers, after a failed load (DESIGN.md): the front end's clean-up
    # unregisters it whichever way that race goes, and the name can be loaded again.
    loaded.client.discard("greedy")
    assert loaded.client.describe("greedy").status == 404
    assert loaded.client.load("greedy", oom_model_dir).status == 507
    loaded.client.discard("greedy")
    assert _invoke_json(loaded, "sentiment", {"input_text": "I loved it"})["label"] == "positive"


def test_model_out_of_memory_at_predict_returns_507_and_the_model_keeps_serving(
    container: LocalContainer, oom_on_long_text_model_dir: Path
) -> None:
    assert container.client.load("greedy-on-long", oom_on_long_text_model_dir).status == 200
    long_text = "this sentence is long enough to need more than twelve tokens once it is tokenized"
    assert container.client.invoke("greedy-on-long", json.dumps({"input_text": long_text})).status == 507
    assert container.client.invoke("greedy-on-long", '{"input_text": "short"}').status == 200
    assert container.client.unload("greedy-on-long").status == 200


def test_broken_model_fails_to_load_and_the_log_names_what_is_missing(
    container: LocalContainer, tmp_path: Path
) -> None:
    (tmp_path / "readme.txt").write_text("no model here")
    answer = container.client.load("broken", tmp_path)
    assert answer.status >= 400
    container.client.discard("broken")
    assert any("no TensorFlow SavedModel" in line for line in container.log_lines())


def test_unload_then_invoke_returns_404(container: LocalContainer, demo_model_dirs: dict[str, Path]) -> None:
    assert container.client.load("short-lived", demo_model_dirs["sentiment"]).status == 200
    assert container.client.unload("short-lived").status == 200
    assert container.client.invoke("short-lived", '{"input_text": "hi"}').status == 404
    assert container.client.unload("short-lived").status == 404
