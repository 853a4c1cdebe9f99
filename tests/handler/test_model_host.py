"""The shared model host, without MMS (served on threads of the test process): its answers are the per-worker
handler's, models are leased per connection, and loads and other models' requests do not wait for each other.
Through real MMS: tests/handler/test_model_host_on_mms.py."""

from __future__ import annotations

import json
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from serving_answers import REQUESTS, assert_close, parse

from handler.host.client import ModelHostClient
from handler.host.server import ModelHost, ModelHostServer, ModelKey
from handler.model import TextClassifier, load_model_dir
from handler.request import answer_request
from handler.settings import ServingSettings, model_host_socket


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A run folder with a short path: a Unix socket path is capped at 107 bytes."""
    folder = Path(tempfile.mkdtemp(prefix="mh-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


class RunningHost:
    """A model host served on threads of this process (the code ``python -m handler.host`` runs)."""

    def __init__(self, run_dir: Path) -> None:
        self.settings = ServingSettings(run_dir=run_dir)
        self.socket_path = model_host_socket(run_dir)
        self.host = ModelHost(self.settings)
        self.server = ModelHostServer(self.socket_path, self.host)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def client(self) -> ModelHostClient:
        return ModelHostClient(self.socket_path, connect_timeout=10, call_timeout=120)

    def status(self) -> dict[str, Any]:
        with self.client() as client:
            return client.call({"op": "status"}).fields["models"]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def host(short_dir: Path) -> Iterator[RunningHost]:
    running = RunningHost(short_dir)
    yield running
    running.stop()


def predict(client: ModelHostClient, model: str, body: bytes, content_type: str, accept: str | None = None) -> Any:
    return client.call(
        {"op": "predict", "model": model, "content_type": content_type, "accept": accept, "has_body": True}, body
    )


def load(client: ModelHostClient, model: str, model_dir: Path) -> int:
    return client.call({"op": "load", "model": model, "model_dir": str(model_dir)}).status


@pytest.fixture(scope="module")
def in_process(demo_model_dirs: dict[str, Path]) -> dict[str, TextClassifier]:
    """Each demo model loaded as the per-worker handler loads it."""
    settings = ServingSettings()
    return {name: load_model_dir(model_dir, settings) for name, model_dir in demo_model_dirs.items()}


def test_host_answers_exactly_as_the_per_worker_handler(
    host: RunningHost, demo_model_dirs: dict[str, Path], in_process: dict[str, TextClassifier]
) -> None:
    with host.client() as client:
        for name, model_dir in demo_model_dirs.items():
            assert load(client, name, model_dir) == 200
            for body, content_type, accept in REQUESTS:
                expected_answer = answer_request(in_process[name], body, content_type, accept, max_texts=64)
                expected, expected_type = expected_answer.body, expected_answer.content_type
                answer = predict(client, name, body, content_type, accept)
                assert answer.status == 200
                assert answer.fields["content_type"] == expected_type
                assert_close(parse(answer.payload, expected_type), parse(expected, expected_type))


@pytest.mark.parametrize(
    ("body", "content_type", "accept", "status", "fragment"),
    [
        (b"{broken", "application/json", None, 400, "not valid JSON"),
        (b"", "application/json", None, 400, "empty"),
        (b"<x/>", "application/xml", None, 415, "application/xml"),
        (b'{"input_text": "fine"}', "application/json", "text/csv", 406, "text/csv"),
    ],
)
def test_bad_input_gets_the_handlers_status_and_message(
    host: RunningHost,
    demo_model_dirs: dict[str, Path],
    body: bytes,
    content_type: str,
    accept: str | None,
    status: int,
    fragment: str,
) -> None:
    with host.client() as client:
        assert load(client, "sentiment", demo_model_dirs["sentiment"]) == 200
        answer = predict(client, "sentiment", body, content_type, accept)
        assert answer.status == status
        assert fragment in answer.message
        assert predict(client, "sentiment", b"I loved it", "text/plain").status == 200


def test_only_the_owner_can_connect(host: RunningHost) -> None:
    # Whoever can connect can have any folder loaded as a model.
    assert stat.S_IMODE(host.socket_path.stat().st_mode) & 0o077 == 0


def test_a_model_not_loaded_on_the_connection_is_404(host: RunningHost, demo_model_dirs: dict[str, Path]) -> None:
    with host.client() as loader, host.client() as other:
        assert load(loader, "sentiment", demo_model_dirs["sentiment"]) == 200
        assert predict(other, "sentiment", b"hi", "text/plain").status == 404


def test_a_folder_that_is_not_a_model_fails_to_load_with_the_reason(host: RunningHost, short_dir: Path) -> None:
    (short_dir / "empty").mkdir()
    with host.client() as client:
        answer = client.call({"op": "load", "model": "broken", "model_dir": str(short_dir / "empty")})
        assert answer.status == 500
        assert "no TensorFlow SavedModel" in answer.message
        answer = client.call({"op": "load", "model": "ghost", "model_dir": str(short_dir / "missing")})
        assert answer.status == 500
        assert "does not exist" in answer.message
    assert host.status() == {}


def test_a_model_is_loaded_once_and_unloaded_with_its_last_lease(
    host: RunningHost, demo_model_dirs: dict[str, Path]
) -> None:
    first, second = host.client(), host.client()
    assert load(first, "sentiment", demo_model_dirs["sentiment"]) == 200
    assert load(second, "sentiment", demo_model_dirs["sentiment"]) == 200
    assert host.status()["sentiment"]["leases"] == 2
    assert second.call({"op": "unload", "model": "sentiment"}).status == 200
    assert second.call({"op": "unload", "model": "sentiment"}).status == 404
    assert host.status()["sentiment"]["leases"] == 1
    # A connection that goes away (its worker exited or was killed) ends its leases.
    first.close()
    second.close()
    assert _eventually(lambda: host.status() == {})


def _eventually(check: Callable[[], bool], attempts: int = 200) -> bool:
    """Whether ``check`` holds within a bounded number of tries (the host ends a lease on its connection's thread)."""
    event = threading.Event()
    for _ in range(attempts):
        if check():
            return True
        event.wait(0.05)
    return check()


def test_a_load_does_not_block_predictions_of_loaded_models(
    host: RunningHost, demo_model_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real_load = host.host.registry._load

    def held_load(key: ModelKey) -> TextClassifier:
        if key[0] == "held":
            release.wait()  # until the test has predicted with the other model
        return real_load(key)

    monkeypatch.setattr(host.host.registry, "_load", held_load)
    with host.client() as client, host.client() as loader:
        assert load(client, "sentiment", demo_model_dirs["sentiment"]) == 200
        result: dict[str, int] = {}
        loading = threading.Thread(target=lambda: result.update(held=load(loader, "held", demo_model_dirs["topic"])))
        loading.start()
        for _ in range(5):
            assert predict(client, "sentiment", b"I loved it", "text/plain").status == 200
        assert loading.is_alive(), "the held load cannot have finished: it waits for the test"
        release.set()
        loading.join()
        assert result == {"held": 200}


def test_two_models_predicted_concurrently_each_get_their_own_answers(
    host: RunningHost, demo_model_dirs: dict[str, Path], in_process: dict[str, TextClassifier]
) -> None:
    texts = {
        "sentiment": ["I loved it, wonderful", "awful, I hated every minute"],
        "topic": ["the striker scored twice", "simmer the garlic for the sauce"],
    }
    expected = {
        name: [prediction.to_json() for prediction in in_process[name].predict(batch)] for name, batch in texts.items()
    }
    start = threading.Barrier(len(texts))
    answers: dict[str, list[Any]] = {name: [] for name in texts}
    errors: list[BaseException] = []

    def hammer(name: str) -> None:
        try:
            with host.client() as client:
                assert load(client, name, demo_model_dirs[name]) == 200
                start.wait()
                for _ in range(20):
                    answer = predict(client, name, json.dumps({"inputs": texts[name]}).encode(), "application/json")
                    answers[name].append(json.loads(answer.payload))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=hammer, args=(name,)) for name in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for name in texts:
        assert len(answers[name]) == 20
        for answer in answers[name]:
            assert_close(answer, expected[name])
