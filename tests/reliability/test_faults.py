"""Faults injected into a running ``mme serve``: a worker killed or frozen mid-traffic, a load that hangs, the whole
container killed, SIGTERM with requests in flight. Each time the other models keep serving, nothing waits longer
than its configured timeout, and the endpoint recovers by itself.

A frozen process (SIGSTOP) is how a hang is injected: the worker neither answers nor dies, which is what a deadlocked
or swapping model looks like from outside. Workers are found machine-wide: one endpoint at a time runs in these tests.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import psutil
import pytest
import requests
from local_serving import BackgroundCalls, mms_workers, serving_containers

from mme.image import DOCKER
from mme.serve_process import ServeProcess

POSITIVE = "I loved this film, it was wonderful"
SPORTS = "the striker scored twice in the final match"
EXPECTED = {"sentiment.tar.gz": "positive", "topic.tar.gz": "sports"}
TEXTS = {"sentiment.tar.gz": POSITIVE, "topic.tar.gz": SPORTS}


@dataclass(frozen=True)
class Outcome:
    """One invocation as a client saw it."""

    model: str
    status: int  # 0: no HTTP answer (the connection failed)
    body: dict[str, object]
    seconds: float
    sent_at: float


def invoke(endpoint: ServeProcess, model: str, *, timeout: float = 90.0) -> Outcome:
    """One ``InvokeEndpoint`` over plain HTTP (no client-side retries, so every failure is seen)."""
    started = time.monotonic()
    try:
        answer = requests.post(
            f"{endpoint.url}/endpoints/local/invocations",
            data=TEXTS[model].encode(),
            headers={"X-Amzn-SageMaker-Target-Model": model, "Content-Type": "text/plain"},
            timeout=timeout,
        )
    except requests.ConnectionError:
        return Outcome(model, 0, {}, time.monotonic() - started, started)
    return Outcome(model, answer.status_code, answer.json(), time.monotonic() - started, started)


def succeeded(outcome: Outcome) -> bool:
    return outcome.status == 200 and outcome.body.get("label") == EXPECTED[outcome.model]


def workers() -> set[int]:
    """Pids of every MMS model worker on the machine (on the host or in the serving container): the processes MMS
    started, not the children a worker forks itself."""
    found = mms_workers()
    return {pid for pid in found if _parent(pid) not in found}


def _parent(pid: int) -> int | None:
    try:
        return psutil.Process(pid).ppid()
    except psutil.NoSuchProcess:
        return None


def load_and_find_worker(endpoint: ServeProcess, model: str) -> int:
    """Load ``model`` and return the pid of the worker its load started."""
    before = workers()
    assert succeeded(invoke(endpoint, model))
    started = workers() - before
    assert len(started) == 1, f"expected one new worker for {model}, found {started}"
    return started.pop()


def wait_until_served(endpoint: ServeProcess, model: str, *, within: float) -> list[Outcome]:
    """Invoke ``model`` until it succeeds; every attempt, the last one successful."""
    deadline = time.monotonic() + within
    attempts = [invoke(endpoint, model)]
    while not succeeded(attempts[-1]):
        assert time.monotonic() < deadline, f"{model} did not recover within {within:g} s: {attempts[-3:]}"
        time.sleep(0.5)
        attempts.append(invoke(endpoint, model))
    return attempts


class Traffic(BackgroundCalls[Outcome]):
    """Clients invoking each model in a loop from their own threads until stopped."""

    def __init__(self, endpoint: ServeProcess, models: list[str], *, clients_per_model: int = 2) -> None:
        super().__init__([partial(invoke, endpoint, model) for model in models for _ in range(clients_per_model)])

    def of(self, model: str) -> list[Outcome]:
        return [outcome for outcome in self.results if outcome.model == model]


def freeze(pid: int) -> list[int]:
    """SIGSTOP a worker and the processes it forked (the one that predicts is a child); the pids frozen."""
    try:
        tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    for process in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.suspend()
    return [process.pid for process in tree]


@pytest.fixture
def frozen() -> Iterator[list[int]]:
    """Pids a test froze with SIGSTOP; any still alive is thawed and killed at the end, so nothing stays stuck."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            process = psutil.Process(pid)
            process.kill()
            process.resume()
        except psutil.NoSuchProcess:
            continue


def test_a_worker_killed_mid_traffic_recovers_and_the_other_model_never_notices(
    serve: Callable[..., ServeProcess], store: Path
) -> None:
    endpoint = serve(store, "--invocation-timeout-seconds", "20")
    victim = load_and_find_worker(endpoint, "sentiment.tar.gz")
    load_and_find_worker(endpoint, "topic.tar.gz")
    with Traffic(endpoint, ["sentiment.tar.gz", "topic.tar.gz"]) as traffic:
        time.sleep(2)
        killed_at = time.monotonic()
        psutil.Process(victim).kill()
        recovery = wait_until_served(endpoint, "sentiment.tar.gz", within=60)
        time.sleep(2)
    recovered_at = recovery[-1].sent_at
    topic = traffic.of("topic.tar.gz")
    assert topic, "no traffic reached the other model"
    assert all(succeeded(outcome) for outcome in topic), [o for o in topic if not succeeded(o)][:3]
    sentiment = traffic.of("sentiment.tar.gz")
    assert all(succeeded(o) for o in sentiment if o.sent_at < killed_at - 0.5), "failures before the kill"
    assert all(succeeded(o) for o in sentiment if o.sent_at > recovered_at), "failures after the recovery"
    # Whatever failed in between failed with an answer, within the invocation timeout.
    assert all(o.status >= 400 and o.seconds < 25 for o in sentiment if not succeeded(o))
    assert victim not in workers()


def test_a_frozen_worker_times_out_its_own_requests_only_and_is_replaced(
    serve: Callable[..., ServeProcess], store: Path, frozen: list[int]
) -> None:
    endpoint = serve(store, "--invocation-timeout-seconds", "3")
    victim = load_and_find_worker(endpoint, "sentiment.tar.gz")
    load_and_find_worker(endpoint, "topic.tar.gz")
    frozen.extend(freeze(victim))
    with ThreadPoolExecutor(2) as pool:
        stuck = pool.submit(invoke, endpoint, "sentiment.tar.gz")
        others = [invoke(endpoint, "topic.tar.gz") for _ in range(5)]
        timed_out = stuck.result()
    assert all(succeeded(outcome) for outcome in others)
    assert timed_out.status == 424
    assert timed_out.body["OriginalStatusCode"] == 0
    assert "timed out" in str(timed_out.body["message"])
    assert timed_out.seconds < 3 + 2
    # The stuck worker was stopped and the model unloaded: the next request loads it afresh.
    assert succeeded(invoke(endpoint, "sentiment.tar.gz"))
    assert endpoint.metric("mme_model_loads_total") == 3
    assert not psutil.pid_exists(victim) or psutil.Process(victim).status() == psutil.STATUS_ZOMBIE


class WorkerFreezer:
    """Freezes every model worker that starts while it runs: a load that hangs."""

    def __init__(self, frozen: list[int]) -> None:
        self._frozen = frozen
        self._known = workers()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in workers() - self._known:
                self._known.add(pid)
                self._frozen.extend(freeze(pid))
            time.sleep(0.02)

    def __enter__(self) -> WorkerFreezer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def test_a_load_that_hangs_fails_that_model_after_the_load_timeout_and_others_keep_serving(
    serve: Callable[..., ServeProcess], store: Path, frozen: list[int]
) -> None:
    # MMS lets go of the stuck load only after its own response timeout: short here, so the model is soon loadable.
    endpoint = serve(
        store, "--load-timeout-seconds", "6", "--load-wait-seconds", "30",
        "--container-env", "MME_RESPONSE_TIMEOUT_SECONDS=10",
    )  # fmt: skip
    load_and_find_worker(endpoint, "sentiment.tar.gz")
    with WorkerFreezer(frozen), ThreadPoolExecutor(1) as pool:
        hanging = pool.submit(invoke, endpoint, "topic.tar.gz")
        during = []
        while not hanging.done():
            during.append(invoke(endpoint, "sentiment.tar.gz"))
            time.sleep(0.2)
        failed = hanging.result()
    assert frozen, "no worker was started for the load"
    assert failed.status == 424
    assert "did not load within 6 s" in str(failed.body["message"])
    assert failed.seconds < 6 + 3  # the timeout, then stopping its workers; MMS unregisters it in the background
    assert len(during) > 3
    assert all(succeeded(outcome) for outcome in during)
    # The abandoned load's workers are gone, and the model loads afresh once MMS has let go of it.
    assert all(not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE for pid in frozen)
    attempts = wait_until_served(endpoint, "topic.tar.gz", within=60)
    assert all(o.status in (424, 429) for o in attempts[:-1]), attempts
    assert endpoint.metric("mme_loaded_models") == 2


def test_sigterm_lets_requests_in_flight_finish_then_stops_cleanly(
    serve: Callable[..., ServeProcess], store: Path
) -> None:
    endpoint = serve(store, "--shutdown-grace-seconds", "20")
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(invoke, endpoint, "topic.tar.gz")  # a cold load: seconds of work in flight
        deadline = time.monotonic() + 30
        while endpoint.metric("mme_cache_misses_total") < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert endpoint.process is not None
        endpoint.process.send_signal(signal.SIGTERM)
        answer = in_flight.result()
    assert succeeded(answer), answer
    assert endpoint.process.wait(30) == 0
    assert invoke(endpoint, "topic.tar.gz", timeout=5).status == 0, "still accepting requests after SIGTERM"


def test_sigterm_cuts_a_request_that_outlives_the_grace_period(
    serve: Callable[..., ServeProcess], store: Path, frozen: list[int]
) -> None:
    endpoint = serve(store, "--shutdown-grace-seconds", "2", "--invocation-timeout-seconds", "60")
    victim = load_and_find_worker(endpoint, "sentiment.tar.gz")
    frozen.extend(freeze(victim))
    with ThreadPoolExecutor(1) as pool:
        stuck = pool.submit(invoke, endpoint, "sentiment.tar.gz")
        time.sleep(1)
        assert endpoint.process is not None
        signalled = time.monotonic()
        endpoint.process.send_signal(signal.SIGTERM)
        assert endpoint.process.wait(30) == 0
        stopped_after = time.monotonic() - signalled
        cut = stuck.result()
    assert cut.status != 200
    assert stopped_after < 30, "SageMaker kills a container 30 s after SIGTERM"


@pytest.mark.parametrize("serve", ["image"], indirect=True)
def test_a_killed_container_is_service_unavailable_then_replaced(
    serve: Callable[..., ServeProcess], store: Path
) -> None:
    before = set(serving_containers())
    endpoint = serve(store)
    assert succeeded(invoke(endpoint, "sentiment.tar.gz"))
    (container,) = set(serving_containers()) - before
    subprocess.run([DOCKER, "kill", container], check=True, capture_output=True, timeout=60)
    first = invoke(endpoint, "sentiment.tar.gz")
    assert (first.status, first.body.get("__type")) == (503, "ServiceUnavailable")
    attempts = wait_until_served(endpoint, "sentiment.tar.gz", within=120)
    # Until the new container answered, each attempt was told to come back, never left hanging.
    assert all(o.status in (429, 503) for o in attempts[:-1]), attempts
    assert json.loads(json.dumps(attempts[-1].body))["label"] == "positive"
