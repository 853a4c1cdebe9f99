"""Workers per model in shared mode through real MMS: a busy model gets more thin workers and every request still
succeeds, an idle one goes back to one worker and stays loaded, an unloaded model does not stop serve or its
scaler, and per-worker mode never scales. (That a request in flight keeps its workers is tested without MMS, in
test_worker_scaler.py: MMS itself drops such a request, docs/model-host.md.)

Every wait is bounded generously (this 2-core machine is shared); nothing asserts how fast it happens."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from local_serving import BackgroundCalls
from serving_answers import REQUESTS, assert_close

from handler.host.client import ModelHostClient
from handler.settings import model_host_socket
from mme.container import ContainerClient, LocalContainer, processes_under

#: Short enough for a test, long enough that a model under load never looks idle between two requests.
IDLE_SECONDS = 4
SCALED_WITHIN_SECONDS = 90.0
TEXT = REQUESTS[1][0]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, demo_model_dirs: dict[str, Path]) -> Iterator[LocalContainer]:
    run_dir = tmp_path_factory.mktemp("mms-scaling")
    environment = {
        "MME_MODEL_HOST": "shared",
        "MME_WORKER_IDLE_SECONDS": str(IDLE_SECONDS),
        "MME_MAX_WORKERS_PER_MODEL": "4",
    }
    with LocalContainer(run_dir, environment=environment) as server:
        for name in ("sentiment", "topic"):
            assert server.client.load(name, demo_model_dirs[name]).status == 200
        yield server
    assert processes_under(run_dir) == [], "an MMS, worker or model host process outlived the server"


def workers(server: LocalContainer, model: str) -> int:
    """How many workers MMS's describe API lists for ``model``."""
    answer = server.client.describe(model)
    assert answer.status == 200, answer.body
    return len(json.loads(answer.body)["workers"])


def host_models(server: LocalContainer) -> dict[str, Any]:
    with ModelHostClient(model_host_socket(server.run_dir), connect_timeout=60, call_timeout=60) as client:
        return client.call({"op": "status"}).fields["models"]


def within(seconds: float, check: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


class Load(BackgroundCalls[tuple[int, bytes]]):
    """Client threads invoking one model back to back until stopped, each with its own connection; every answer's
    status and body is kept."""

    def __init__(self, server: LocalContainer, model: str, clients: int = 6) -> None:
        self._clients = [ContainerClient(server.base_url) for _ in range(clients)]
        super().__init__([partial(self._invoke, client, model) for client in self._clients])

    @staticmethod
    def _invoke(client: ContainerClient, model: str) -> tuple[int, bytes]:
        answer = client.invoke(model, TEXT)
        return answer.status, answer.body

    def __exit__(self, *exc_info: object) -> None:
        try:
            super().__exit__(*exc_info)
        finally:
            for client in self._clients:
                client.close()


def make_busy_until_scaled(server: LocalContainer, model: str) -> list[tuple[int, bytes]]:
    with Load(server, model) as load:
        scaled = within(SCALED_WITHIN_SECONDS, lambda: workers(server, model) > 1)
    assert scaled, f"{model} kept one worker under sustained concurrent load"
    return load.results


def test_per_worker_mode_never_scales(tmp_path: Path, demo_model_dirs: dict[str, Path]) -> None:
    """First in the module: it runs before the shared server starts, so one MMS runs at a time."""
    with LocalContainer(
        tmp_path / "per-worker", environment={"MME_MODEL_HOST": "per-worker", "MME_WORKER_IDLE_SECONDS": "1"}
    ) as server:
        assert server.client.load("topic", demo_model_dirs["topic"]).status == 200
        with Load(server, "topic", clients=4) as load:
            # Long enough for a shared-mode server to scale several times over (1 s intervals).
            time.sleep(8)
            assert workers(server, "topic") == 1
        assert all(status == 200 for status, _ in load.results)
        assert workers(server, "topic") == 1
    assert not any(" workers (" in line for line in server.log_lines())


def test_a_busy_model_gets_more_workers_every_request_succeeds_and_an_idle_one_keeps_one(
    shared: LocalContainer,
) -> None:
    assert workers(shared, "sentiment") == workers(shared, "topic") == 1
    answers = make_busy_until_scaled(shared, "sentiment")
    assert answers
    assert all(status == 200 for status, _ in answers), {status for status, _ in answers}
    # The same text, the same answer, whichever worker took it.
    for _, body in answers:
        assert_close(json.loads(body), json.loads(answers[0][1]))
    assert workers(shared, "sentiment") <= 4
    assert workers(shared, "topic") == 1
    assert any("model sentiment: 1 -> " in line for line in shared.log_lines())


def test_an_idle_model_goes_back_to_one_worker_and_stays_loaded(shared: LocalContainer) -> None:
    if workers(shared, "sentiment") == 1:
        make_busy_until_scaled(shared, "sentiment")
    assert within(IDLE_SECONDS + SCALED_WITHIN_SECONDS, lambda: workers(shared, "sentiment") == 1)
    # The removed workers' leases end; the one left keeps the model loaded in the host.
    assert within(60, lambda: host_models(shared)["sentiment"]["leases"] == 1)
    answer = shared.client.invoke("sentiment", TEXT)
    assert answer.status == 200, answer.body
    assert workers(shared, "topic") == 1


def test_a_model_unloaded_while_scaled_stops_neither_serve_nor_the_scaler(
    shared: LocalContainer, demo_model_dirs: dict[str, Path]
) -> None:
    model = "short-lived"
    assert shared.client.load(model, demo_model_dirs["topic"]).status == 200
    make_busy_until_scaled(shared, model)
    assert shared.client.unload(model).status == 200
    assert within(60, lambda: model not in host_models(shared))
    time.sleep(IDLE_SECONDS + 2)  # the scaler's idle scale-down of the unloaded model would fall in here
    assert shared.running
    assert shared.client.ping().status == 200
    # The same name loaded again starts from one worker and scales again: the scaler is alive and forgot the old one.
    assert shared.client.load(model, demo_model_dirs["topic"]).status == 200
    assert workers(shared, model) == 1
    make_busy_until_scaled(shared, model)
    assert shared.client.unload(model).status == 200
    assert not any("scaling MMS workers failed" in line for line in shared.log_lines())
