"""Dynamic batching per model (handler/host/batching.py): what goes into a model call, who gets which answers, and
the batcher's life. The batching logic runs against a recording classifier (the unit's dependency, no TensorFlow);
batched answers are checked against one-by-one answers on the real demo models, in process and through the host."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from serving_answers import assert_close

from handler.codec import Prediction
from handler.errors import ModelOutOfMemoryError
from handler.host.batching import BatcherClosedError, BatchingClassifier
from handler.host.client import ModelHostClient
from handler.host.server import ModelHost, ModelHostServer
from handler.manifest import ResponseFormat
from handler.model import TextClassifier, load_model_dir
from handler.settings import ServingSettings, model_host_socket

#: Long enough that a test which waited for it would be noticed, never reached by a test that passes.
FOREVER = 60.0


class RecordingClassifier:
    """Predicts each text's own label (the text itself) and records every call; ``hold`` keeps a call waiting."""

    labels = ("a", "b")
    response_format = ResponseFormat.PREDICTION

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.in_call = threading.Event()
        self.hold = threading.Event()
        self.hold.set()

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        self.calls.append(list(texts))
        self.in_call.set()
        self.hold.wait()
        if "boom" in texts:
            raise ModelOutOfMemoryError("out of memory while predicting: boom")
        return [Prediction(label=text, scores={"a": 0.5, "b": 0.5}, output=[float(len(text))]) for text in texts]


def _eventually(check: Callable[[], bool], attempts: int = 400) -> bool:
    event = threading.Event()
    for _ in range(attempts):
        if check():
            return True
        event.wait(0.025)
    return check()


class Callers:
    """Callers of one batcher, each on its own thread, queued in the order they are started."""

    def __init__(self, batcher: BatchingClassifier, model: RecordingClassifier) -> None:
        self.batcher = batcher
        self.model = model
        self.threads: list[threading.Thread] = []
        self.answers: dict[int, list[Prediction] | BaseException] = {}

    def start(self, texts: list[str]) -> int:
        index = len(self.threads)
        queued = self.batcher.pending

        def call() -> None:
            try:
                self.answers[index] = self.batcher.predict(texts)
            except BaseException as error:
                self.answers[index] = error

        thread = threading.Thread(target=call)
        self.threads.append(thread)
        thread.start()
        # Queued (or already in a model call) before the next one starts: the queue's order is the order here.
        assert _eventually(lambda: self.batcher.pending > queued or any(texts[0] in call for call in self.model.calls))
        return index

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=FOREVER)
            assert not thread.is_alive()


@pytest.fixture
def recording() -> RecordingClassifier:
    return RecordingClassifier()


def _hold_the_model(recording: RecordingClassifier, callers: Callers, size: int) -> None:
    """One full batch in the model call, kept there until ``recording.hold`` is set, so the next calls queue."""
    recording.hold.clear()
    callers.start([f"held{i}" for i in range(size)])
    assert recording.in_call.wait(FOREVER)


def test_batches_take_queued_requests_in_order_up_to_the_cap_and_a_larger_request_runs_alone(
    recording: RecordingClassifier,
) -> None:
    batcher = BatchingClassifier(recording, max_batch_size=4, max_batch_delay=FOREVER)
    callers = Callers(batcher, recording)
    _hold_the_model(recording, callers, 4)
    sizes = [1, 2, 1, 3, 2, 2, 6, 1, 3]
    for number, size in enumerate(sizes):
        callers.start([f"r{number}.{i}" for i in range(size)])
    recording.hold.set()
    callers.join()
    batcher.close()
    # Every batch is full (or its next request does not fit), so none waited for the delay.
    assert [len(call) for call in recording.calls] == [4, 1 + 2 + 1, 3, 2 + 2, 6, 1 + 3]
    for index, size in enumerate(sizes, start=1):
        assert [p.label for p in callers.answers[index]] == [f"r{index - 1}.{i}" for i in range(size)]
    assert batcher.counts.batches == 6
    assert batcher.counts.texts == 4 + sum(sizes)


def test_a_lone_request_does_not_wait_when_no_other_sender_can_send(recording: RecordingClassifier) -> None:
    batcher = BatchingClassifier(recording, max_batch_size=8, max_batch_delay=FOREVER, senders=lambda: 1)
    started = time.monotonic()
    assert [p.label for p in batcher.predict(["alone"])] == ["alone"]
    assert time.monotonic() - started < FOREVER / 2
    batcher.close()


def test_a_batch_waits_for_every_possible_sender_and_no_longer(recording: RecordingClassifier) -> None:
    batcher = BatchingClassifier(recording, max_batch_size=8, max_batch_delay=FOREVER, senders=lambda: 3)
    callers = Callers(batcher, recording)
    for name in ("x", "y", "z"):
        callers.start([name])
    callers.join()
    batcher.close()
    assert recording.calls == [["x", "y", "z"]]
    assert [callers.answers[i][0].label for i in range(3)] == ["x", "y", "z"]


def test_a_batch_that_is_not_full_runs_once_the_delay_has_passed(recording: RecordingClassifier) -> None:
    delay = 0.2
    batcher = BatchingClassifier(recording, max_batch_size=8, max_batch_delay=delay)
    started = time.monotonic()
    assert [p.label for p in batcher.predict(["late"])] == ["late"]
    elapsed = time.monotonic() - started
    assert delay <= elapsed < FOREVER / 2
    batcher.close()


def test_an_error_reaches_every_caller_of_its_batch_and_the_next_batch_works(recording: RecordingClassifier) -> None:
    senders = [3]
    batcher = BatchingClassifier(recording, max_batch_size=8, max_batch_delay=FOREVER, senders=lambda: senders[0])
    callers = Callers(batcher, recording)
    for texts in (["fine"], ["boom"], ["also fine", "too"]):
        callers.start(texts)
    callers.join()
    assert recording.calls == [["fine", "boom", "also fine", "too"]]
    assert all(isinstance(callers.answers[i], ModelOutOfMemoryError) for i in range(3))
    senders[0] = 1
    assert [p.label for p in batcher.predict(["after"])] == ["after"]
    assert batcher.counts.batches == 1
    batcher.close()


def test_concurrent_callers_each_get_exactly_their_own_answers_in_order(recording: RecordingClassifier) -> None:
    batcher = BatchingClassifier(recording, max_batch_size=8, max_batch_delay=0.002)
    errors: list[BaseException] = []
    start = threading.Barrier(12)

    def caller(number: int) -> None:
        try:
            start.wait()
            for round_ in range(25):
                texts = [f"{number}-{round_}-{i}" for i in range(1 + (number + round_) % 5)]
                assert [p.label for p in batcher.predict(texts)] == texts
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=caller, args=(number,)) for number in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=FOREVER)
    batcher.close()
    assert errors == []
    assert all(len(call) <= 8 for call in recording.calls)
    assert batcher.counts.texts == sum(1 + (n + r) % 5 for n in range(12) for r in range(25))


def test_two_models_are_never_mixed_in_a_batch() -> None:
    models = {name: RecordingClassifier() for name in ("left", "right")}
    batchers = {
        name: BatchingClassifier(model, max_batch_size=8, max_batch_delay=0.002) for name, model in models.items()
    }
    start = threading.Barrier(8)

    def caller(name: str, number: int) -> None:
        start.wait()
        for round_ in range(20):
            texts = [f"{name}-{number}-{round_}"]
            assert [p.label for p in batchers[name].predict(texts)] == texts

    threads = [threading.Thread(target=caller, args=(name, n)) for name in models for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=FOREVER)
    for name, model in models.items():
        batchers[name].close()
        assert all(text.startswith(f"{name}-") for call in model.calls for text in call)
        assert sum(len(call) for call in model.calls) == 4 * 20


def test_close_answers_what_is_queued_ends_the_thread_and_refuses_later_calls(recording: RecordingClassifier) -> None:
    batcher = BatchingClassifier(recording, max_batch_size=8, max_batch_delay=FOREVER, name="closing")
    assert set(batcher.threads) <= set(threading.enumerate())
    callers = Callers(batcher, recording)
    _hold_the_model(recording, callers, 8)
    callers.start(["queued"])
    closing = threading.Thread(target=batcher.close)
    closing.start()
    recording.hold.set()
    closing.join(timeout=FOREVER)
    callers.join()
    assert [p.label for p in callers.answers[1]] == ["queued"]
    assert not set(batcher.threads) & set(threading.enumerate())
    with pytest.raises(BatcherClosedError):
        batcher.predict(["too late"])


def test_with_two_model_calls_a_second_batch_runs_while_the_first_is_in_the_model_and_answers_stay_their_own() -> None:
    both_in = threading.Barrier(2, timeout=FOREVER)

    class Overlapping(RecordingClassifier):
        def predict(self, texts: Sequence[str]) -> list[Prediction]:
            # Only two model calls at once pass this: one at a time would time out here.
            both_in.wait()
            return super().predict(texts)

    model = Overlapping()
    # A batch holds one request of two texts, so the two requests cannot share one call, whenever they arrive.
    batcher = BatchingClassifier(model, max_batch_size=2, max_batch_delay=0, model_calls=2, name="overlapping")
    assert len(batcher.threads) == 2
    answers: dict[str, list[str]] = {}

    def call(text: str) -> None:
        answers[text] = [p.label for p in batcher.predict([text, f"{text}-2"])]

    callers = [threading.Thread(target=call, args=(text,)) for text in ("first", "second")]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(timeout=FOREVER)
    assert answers == {"first": ["first", "first-2"], "second": ["second", "second-2"]}
    assert len(model.calls) == 2
    batcher.close()
    assert not set(batcher.threads) & set(threading.enumerate())


def test_many_callers_with_two_model_calls_each_get_exactly_their_own_answers(recording: RecordingClassifier) -> None:
    batcher = BatchingClassifier(recording, max_batch_size=4, max_batch_delay=0, model_calls=2)
    sent: dict[int, list[list[str]]] = {index: [] for index in range(8)}
    answered: dict[int, list[list[str]]] = {index: [] for index in range(8)}

    def call(index: int) -> None:
        for round_ in range(20):
            texts = [f"{index}-{round_}-{i}" for i in range(1 + (index + round_) % 3)]
            sent[index].append(texts)
            answered[index].append([p.label for p in batcher.predict(texts)])

    callers = [threading.Thread(target=call, args=(index,)) for index in range(8)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(timeout=FOREVER)
    assert answered == sent
    # Every text went through exactly one model call, and no call held more than the cap.
    assert sorted(text for call in recording.calls for text in call) == sorted(
        text for texts in sent.values() for request in texts for text in request
    )
    assert max(len(call) for call in recording.calls) <= 4
    batcher.close()


def test_a_batch_size_of_one_calls_the_model_once_per_request_without_a_thread(recording: RecordingClassifier) -> None:
    batcher = BatchingClassifier(recording, max_batch_size=1, max_batch_delay=FOREVER)
    assert batcher.threads == ()
    assert [p.label for p in batcher.predict(["one", "two"])] == ["one", "two"]
    assert [p.label for p in batcher.predict(["three"])] == ["three"]
    assert recording.calls == [["one", "two"], ["three"]]
    assert (batcher.counts.batches, batcher.counts.texts) == (2, 3)


# The real demo models: batched answers are one-by-one answers, in process and through the host.

#: Texts of very different lengths (1 to ~60 tokens): a dynamic-length batch pads them all to its longest.
TEXTS = [
    "great",
    "I loved this film, it was wonderful",
    "the striker scored twice in the second half and the crowd " * 4,
    "awful",
    "simmer the garlic and tomato for twenty minutes, then add basil",
    "a cheap flight to the beach",
]


@pytest.fixture(scope="module")
def demo_classifiers(demo_model_dirs: dict[str, Path]) -> dict[str, TextClassifier]:
    settings = ServingSettings()
    return {name: load_model_dir(model_dir, settings) for name, model_dir in demo_model_dirs.items()}


def _as_json(predictions: list[Prediction]) -> list[dict[str, object]]:
    return [prediction.to_json() for prediction in predictions]


@pytest.mark.parametrize("name", ["sentiment", "topic"])
def test_batched_answers_equal_one_by_one_answers_on_the_demo_models(
    demo_classifiers: dict[str, TextClassifier], name: str
) -> None:
    model = demo_classifiers[name]
    requests = [[TEXTS[0]], [TEXTS[1], TEXTS[2]], [TEXTS[3]], [TEXTS[4], TEXTS[5], TEXTS[0]]]
    # Every request in one batch: it runs once all four callers are in.
    batcher = BatchingClassifier(model, max_batch_size=16, max_batch_delay=FOREVER, senders=lambda: len(requests))
    answers: dict[int, list[Prediction]] = {}
    threads = [
        threading.Thread(target=lambda i=i, texts=texts: answers.update({i: batcher.predict(texts)}))
        for i, texts in enumerate(requests)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=FOREVER)
    batcher.close()
    assert (batcher.counts.batches, batcher.counts.texts) == (1, 7)
    for i, texts in enumerate(requests):
        assert_close(_as_json(answers[i]), [_as_json(model.predict([text]))[0] for text in texts])


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A run folder with a short path: a Unix socket path is capped at 107 bytes."""
    folder = Path(tempfile.mkdtemp(prefix="mb-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


class Host:
    """A model host served on threads of this process, with the given batching settings."""

    def __init__(self, run_dir: Path, **batching: int) -> None:
        self.socket_path = model_host_socket(run_dir)
        self.host = ModelHost(ServingSettings(run_dir=run_dir, **batching))
        self.server = ModelHostServer(self.socket_path, self.host)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def client(self) -> ModelHostClient:
        return ModelHostClient(self.socket_path, connect_timeout=10, call_timeout=120)

    def models(self) -> dict[str, Any]:
        with self.client() as client:
            return client.call({"op": "status"}).fields["models"]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _load(client: ModelHostClient, name: str, model_dir: Path) -> None:
    assert client.call({"op": "load", "model": name, "model_dir": str(model_dir)}).status == 200


def _predict(client: ModelHostClient, name: str, texts: list[str]) -> list[Any]:
    body = json.dumps({"inputs": texts}).encode()
    answer = client.call(
        {"op": "predict", "model": name, "content_type": "application/json", "accept": None, "has_body": True}, body
    )
    assert answer.status == 200, answer.message
    return json.loads(answer.payload)


class Recorded:
    """A loaded model whose calls are recorded (after its warm-up: only what the host sends it)."""

    def __init__(self, model: TextClassifier) -> None:
        self.model = model
        self.calls: list[list[str]] = []

    @property
    def labels(self) -> tuple[str, ...]:
        return self.model.labels

    @property
    def response_format(self) -> ResponseFormat:
        return self.model.response_format

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        self.calls.append(list(texts))
        return self.model.predict(texts)


@pytest.fixture
def recorded_host(short_dir: Path) -> Iterator[tuple[Host, dict[str, Recorded]]]:
    host = Host(short_dir)
    recorded: dict[str, Recorded] = {}
    real_load = host.host.registry._load

    def recording_load(key: tuple[str, str]) -> TextClassifier:
        recorded[key[0]] = Recorded(real_load(key))
        return recorded[key[0]]

    host.host.registry._load = recording_load  # type: ignore[method-assign]
    yield host, recorded
    host.stop()


def test_the_host_batches_each_model_apart_and_answers_each_caller_its_own(
    recorded_host: tuple[Host, dict[str, Recorded]], demo_model_dirs: dict[str, Path]
) -> None:
    host, recorded = recorded_host
    workers, rounds = 3, 15
    clients = {name: [host.client() for _ in range(workers)] for name in ("sentiment", "topic")}
    for name, connections in clients.items():
        for client in connections:
            _load(client, name, demo_model_dirs[name])
    # Each model's texts name it, so a text in the other model's call would show.
    texts_of = {name: [f"{text} {name}" for text in TEXTS] for name in clients}
    expected = {
        (name, text): _predict(clients[name][0], name, [text])[0] for name in clients for text in texts_of[name]
    }
    sent = dict.fromkeys(clients, len(TEXTS))
    start = threading.Barrier(2 * workers)
    errors: list[BaseException] = []

    def worker(name: str, number: int, client: ModelHostClient) -> None:
        try:
            start.wait()
            for round_ in range(rounds):
                texts = [texts_of[name][(number + round_ + i) % len(TEXTS)] for i in range(1 + (number + round_) % 3)]
                assert_close(_predict(client, name, texts), [expected[name, text] for text in texts])
        except BaseException as error:
            errors.append(error)

    threads = [
        threading.Thread(target=worker, args=(name, number, client))
        for name, connections in clients.items()
        for number, client in enumerate(connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=FOREVER)
    assert errors == []
    status = host.models()
    for name in clients:
        sent[name] += sum(1 + (n + r) % 3 for n in range(workers) for r in range(rounds))
        calls = recorded[name].calls
        assert all(text.endswith(f" {name}") for call in calls for text in call)
        assert all(len(call) <= ServingSettings().max_batch_size for call in calls)
        assert sum(len(call) for call in calls) == sent[name]
        assert (status[name]["batches"], status[name]["texts"]) == (len(calls), sent[name])
    for connections in clients.values():
        for client in connections:
            client.close()


def _batcher_threads(name: str) -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == f"batcher {name}"]


def test_unloading_a_model_ends_its_batcher_threads(short_dir: Path, demo_model_dirs: dict[str, Path]) -> None:
    host = Host(short_dir)
    threads = ServingSettings().parallel_batches
    try:
        with host.client() as client:
            _load(client, "sentiment", demo_model_dirs["sentiment"])
            assert _predict(client, "sentiment", ["I loved it"])[0]["label"] == "positive"
            assert len(_batcher_threads("sentiment")) == threads
            assert client.call({"op": "unload", "model": "sentiment"}).status == 200
            # The unload answers after the threads have ended.
            assert _batcher_threads("sentiment") == []
            _load(client, "sentiment", demo_model_dirs["sentiment"])
            assert len(_batcher_threads("sentiment")) == threads
        # A connection that goes away ends its leases, and the last lease the threads.
        assert _eventually(lambda: _batcher_threads("sentiment") == [])
    finally:
        host.stop()


def test_a_batch_size_of_one_makes_one_model_call_per_request(
    short_dir: Path, demo_model_dirs: dict[str, Path]
) -> None:
    host = Host(short_dir, max_batch_size=1)
    try:
        clients = [host.client() for _ in range(3)]
        for client in clients:
            _load(client, "topic", demo_model_dirs["topic"])
        assert _batcher_threads("topic") == []

        def send(client: ModelHostClient) -> None:
            for _ in range(5):
                assert _predict(client, "topic", ["the striker scored", "a new laptop"])[1]["label"] == "tech"

        threads = [threading.Thread(target=send, args=(client,)) for client in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=FOREVER)
        status = host.models()["topic"]
        assert (status["batches"], status["texts"]) == (15, 30)
        for client in clients:
            client.close()
    finally:
        host.stop()
