"""Shared mode through real MMS (``python -m handler.serve`` with ``MME_MODEL_HOST=shared``): the same answers as
per-worker mode, thin workers, loads and unloads reaching the host, a killed host restarted and its models loaded
again on demand, and two models answering concurrently."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from serving_answers import REQUESTS, assert_close, parse

from handler.host.client import ModelHostClient
from handler.settings import model_host_socket
from mme.container import ContainerError, LocalContainer, processes_under

MODELS = ("sentiment", "topic")


@dataclass(frozen=True)
class Baseline:
    """What per-worker mode answered to :data:`REQUESTS`, and how large its workers were."""

    answers: dict[tuple[str, int], tuple[int, str, Any]]
    largest_worker_rss: int


def _answers(server: LocalContainer) -> dict[tuple[str, int], tuple[int, str, Any]]:
    answers = {}
    for name in MODELS:
        for index, (body, content_type, accept) in enumerate(REQUESTS):
            answer = server.client.invoke(name, body, content_type=content_type, accept=accept)
            answers[name, index] = (answer.status, answer.content_type, parse(answer.body, answer.content_type))
    return answers


def _maps_tensorflow(process: psutil.Process) -> bool:
    maps = Path(f"/proc/{process.pid}/maps").read_text()
    return "libtensorflow" in maps


@pytest.fixture(scope="module")
def per_worker(tmp_path_factory: pytest.TempPathFactory, demo_model_dirs: dict[str, Path]) -> Baseline:
    run_dir = tmp_path_factory.mktemp("mms-per-worker")
    with LocalContainer(run_dir, environment={"MME_MODEL_HOST": "per-worker"}) as server:
        for name in MODELS:
            assert server.client.load(name, demo_model_dirs[name]).status == 200
        answers = _answers(server)
        workers = server.worker_processes()
        # The check the shared mode's workers must fail: a per-worker mode worker holds TensorFlow.
        assert any(_maps_tensorflow(worker) for worker in workers)
        largest = max(worker.memory_info().rss for worker in workers)
    assert processes_under(run_dir) == []
    return Baseline(answers, largest)


@pytest.fixture(scope="module")
def shared(
    tmp_path_factory: pytest.TempPathFactory, demo_model_dirs: dict[str, Path], per_worker: Baseline
) -> Iterator[LocalContainer]:
    """Started after the per-worker server has stopped (it depends on its fixture), with both demo models."""
    run_dir = tmp_path_factory.mktemp("mms-shared")
    with LocalContainer(run_dir, environment={"MME_MODEL_HOST": "shared"}) as server:
        for name in MODELS:
            assert server.client.load(name, demo_model_dirs[name]).status == 200
        yield server
    assert processes_under(run_dir) == [], "an MMS, worker or model host process outlived the server"
    # Stopped by serve (SIGTERM, after MMS), not by the clean-up that kills whatever is left.
    assert any("INFO handler.host.server: model host" in line and "stopped" in line for line in server.log_lines())


def host_status(server: LocalContainer) -> dict[str, Any]:
    with ModelHostClient(model_host_socket(server.run_dir), connect_timeout=60, call_timeout=60) as client:
        return client.call({"op": "status"}).fields


def host_process(server: LocalContainer) -> psutil.Process:
    [process] = server.model_host_processes()
    return process


def _eventually(check: Any, attempts: int = 400) -> bool:
    """Whether ``check()`` holds within a bounded number of tries (MMS answers a DELETE before the host hears of
    the worker's end)."""
    event = threading.Event()
    for _ in range(attempts):
        if check():
            return True
        event.wait(0.05)
    return check()


def test_shared_mode_answers_as_per_worker_mode_does(shared: LocalContainer, per_worker: Baseline) -> None:
    for key, (status, content_type, expected) in per_worker.answers.items():
        answer = shared.client.invoke(key[0], REQUESTS[key[1]][0], content_type=REQUESTS[key[1]][1],
                                      accept=REQUESTS[key[1]][2])  # fmt: skip
        assert (answer.status, answer.content_type) == (status, content_type), key
        assert_close(parse(answer.body, answer.content_type), expected)


def test_workers_are_thin(shared: LocalContainer, per_worker: Baseline) -> None:
    workers = shared.worker_processes()
    assert len(workers) >= len(MODELS)
    assert not any(_maps_tensorflow(worker) for worker in workers)
    assert _maps_tensorflow(host_process(shared))
    # Measured here: ~60 MB per thin worker against ~600 MB for a per-worker mode worker.
    assert max(worker.memory_info().rss for worker in workers) * 4 < per_worker.largest_worker_rss


def test_loads_and_unloads_through_mms_reach_the_host(shared: LocalContainer, demo_model_dirs: dict[str, Path]) -> None:
    assert shared.client.load("short-lived", demo_model_dirs["topic"]).status == 200
    loaded = {"model_dir": str(demo_model_dirs["topic"]), "leases": 1, "batches": 0, "texts": 0}
    assert host_status(shared)["models"]["short-lived"] == loaded
    assert shared.client.invoke("short-lived", '{"input_text": "the striker scored"}').json()["label"] == "sports"
    assert host_status(shared)["models"]["short-lived"] == {**loaded, "batches": 1, "texts": 1}
    assert shared.client.unload("short-lived").status == 200
    assert _eventually(lambda: "short-lived" not in host_status(shared)["models"])
    assert shared.client.invoke("short-lived", '{"input_text": "hi"}').status == 404


def test_two_models_answer_concurrently_each_with_its_own_answers(shared: LocalContainer, per_worker: Baseline) -> None:
    start = threading.Barrier(len(MODELS))
    got: dict[str, list[tuple[int, Any]]] = {name: [] for name in MODELS}

    def invoke(name: str) -> None:
        client = type(shared.client)(shared.base_url)
        start.wait()
        for _ in range(10):
            answer = client.invoke(name, REQUESTS[1][0])
            got[name].append((answer.status, answer.json()))
        client.close()

    threads = [threading.Thread(target=invoke, args=(name,)) for name in MODELS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name in MODELS:
        assert len(got[name]) == 10
        for status, body in got[name]:
            assert status == 200
            assert_close(body, per_worker.answers[name, 1][2])


def test_a_killed_host_is_restarted_and_models_load_again_on_demand(
    shared: LocalContainer, per_worker: Baseline
) -> None:
    killed = host_process(shared)
    killed.send_signal(signal.SIGKILL)
    killed.wait(30)
    # The next requests wait for the restarted host (bounded by MME_MODEL_HOST_START_TIMEOUT_SECONDS), then their
    # workers load their models again from the folders MMS gave them.
    for name in MODELS:
        answer = shared.client.invoke(name, REQUESTS[0][0])
        assert answer.status == 200, answer.body
        assert_close(answer.json(), per_worker.answers[name, 0][2])
    status = host_status(shared)
    assert status["pid"] != killed.pid
    assert set(status["models"]) >= set(MODELS)
    assert shared.client.ping().status == 200
    assert any(f"model host (pid {killed.pid}) exited" in line for line in shared.log_lines())
    assert json.loads(shared.client.list_models().body)["models"]


def _unread_bytes(socket_path: Path) -> int:
    """Bytes sent to the model host's connections and not read yet (``ss``, iproute2's socket statistics)."""
    listing = subprocess.run(["ss", "-x", "-H", "state", "established"], capture_output=True, text=True, check=True)
    return sum(int(line.split()[1]) for line in listing.stdout.splitlines() if str(socket_path) in line)


def test_a_request_in_flight_when_the_host_dies_is_503_and_the_next_one_succeeds(
    shared: LocalContainer, per_worker: Baseline
) -> None:
    if shutil.which("ss") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run this test: install iproute2 (ss)")
        pytest.skip("needs ss (iproute2) to see that the request reached the host")
    socket_path = model_host_socket(shared.run_dir)
    host = host_process(shared)
    host.suspend()  # so the request stays in flight: sent to the host, never answered
    try:
        result: dict[str, Any] = {}
        client = type(shared.client)(shared.base_url)
        invoking = threading.Thread(
            target=lambda: result.update(answer=client.invoke("sentiment", "I loved it", content_type="text/plain"))
        )
        invoking.start()
        assert _eventually(lambda: _unread_bytes(socket_path) > 0), "the request never reached the host"
    finally:
        host.kill()
    invoking.join()
    client.close()
    answer = result["answer"]
    assert answer.status == 503
    assert "model host is unavailable" in answer.json()["error"]
    answer = shared.client.invoke("sentiment", REQUESTS[0][0])
    assert answer.status == 200
    assert_close(answer.json(), per_worker.answers["sentiment", 0][2])


def test_a_host_that_cannot_start_stops_serve_with_status_3(tmp_path_factory: pytest.TempPathFactory) -> None:
    run_dir = tmp_path_factory.mktemp("mms-no-host")
    # A folder where the socket must go: the host cannot listen, and exits.
    (run_dir / "model-host.sock" / "in-the-way").mkdir(parents=True)
    server = LocalContainer(run_dir, environment={"MME_MODEL_HOST": "shared"})
    with pytest.raises(ContainerError, match="exited with 3"):
        server.start()
    assert server.exit_status == 3
    assert any("exited before it was ready; serve exits with status 3" in line for line in server.log_lines())
    assert processes_under(run_dir) == []
