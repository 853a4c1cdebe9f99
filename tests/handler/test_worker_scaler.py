"""The worker scaler without MMS: the scaling rule, the host's per-model activity counts, and the scaler's reading
of both against stand-ins for the host's ``status`` and MMS's ``PUT /models/{name}``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from handler.host.activity import ModelActivity
from handler.host.scaler import ModelLoad, WorkerScaler, workers_wanted
from handler.mms_management import mms_address
from handler.settings import ServingSettings


def wanted(workers: int, concurrency: float, idle_seconds: float = 0.0) -> int | None:
    return workers_wanted(ModelLoad(workers, concurrency, idle_seconds), baseline=1, maximum=4, idle_after=60)


@pytest.mark.parametrize(
    ("workers", "concurrency", "idle_seconds", "expected"),
    [
        (1, 0.5, 0, 2),  # busy half the time: requests already queue in MMS
        (1, 0.4, 0, None),  # light load keeps its one worker
        (2, 1.5, 0, 4),  # doubles
        (3, 3.0, 0, 4),  # up to the maximum
        (4, 4.0, 0, None),  # at the maximum
        (2, 0.2, 30, None),  # less busy but not idle: no flapping
        (4, 0.0, 60, 1),  # idle: back to the baseline at once
        (1, 0.0, 600, None),  # idle at the baseline already
        (0, 3.0, 0, None),  # no worker holds a lease (MMS is restarting it): nothing to double
    ],
)
def test_scaling_rule(workers: int, concurrency: float, idle_seconds: float, expected: int | None) -> None:
    assert wanted(workers, concurrency, idle_seconds) == expected


def test_the_baseline_is_the_floor_of_a_scale_up() -> None:
    load = ModelLoad(workers=1, concurrency=1.0, idle_seconds=0)
    assert workers_wanted(load, baseline=3, maximum=8, idle_after=60) == 3


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_activity_integrates_requests_in_flight_over_time() -> None:
    clock = Clock()
    activity = ModelActivity(clock)
    with activity.request("a"):
        clock.now += 2
        with activity.request("a"):
            clock.now += 1
            assert activity.snapshot(keep={"a"})["a"] == {"in_flight": 2, "requests": 2, "request_seconds": 4.0}
    clock.now += 5
    assert activity.snapshot(keep={"a"})["a"] == {"in_flight": 0, "requests": 2, "request_seconds": 4.0}
    # A model no longer loaded is forgotten once nothing of it is in flight.
    assert activity.snapshot(keep=set()) == {}


class Scaler(WorkerScaler):
    """The scaler with the host's status and MMS's answers scripted: ``statuses`` are answered in turn."""

    def __init__(self, settings: ServingSettings, clock: Clock) -> None:
        super().__init__(settings, clock=clock)
        self.statuses: list[dict[str, Any] | None] = []
        self.mms_status: int = 202
        self.put: list[tuple[str, int]] = []

    def _status(self) -> dict[str, Any] | None:
        return self.statuses.pop(0)

    def _scale(self, name: str, workers: int) -> tuple[int | str, str]:
        self.put.append((name, workers))
        return self.mms_status, ""


def status(leases: int, in_flight: int, requests: int, request_seconds: float, pid: int = 7) -> dict[str, Any]:
    return {
        "pid": pid,
        "models": {"m": {"model_dir": "/m", "leases": leases}},
        "activity": {"m": {"in_flight": in_flight, "requests": requests, "request_seconds": request_seconds}},
    }


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def scaler(tmp_path: Path, clock: Clock) -> Scaler:
    settings = ServingSettings(run_dir=tmp_path, model_host="shared", worker_idle_seconds=60)
    return Scaler(settings, clock)


def test_a_model_busy_over_an_interval_is_scaled_up_once_while_its_workers_start(scaler: Scaler, clock: Clock) -> None:
    scaler.statuses = [status(1, 1, 10, 0.0), status(1, 1, 30, 0.9), status(1, 1, 50, 1.8)]
    scaler.scale_once()  # first sight: a baseline only
    clock.now += 1
    scaler.scale_once()
    assert scaler.put == [("m", 2)]
    clock.now += 1
    scaler.scale_once()  # the new worker holds no lease yet: not asked again
    assert scaler.put == [("m", 2)]


def test_an_idle_model_is_scaled_down_only_if_a_second_look_finds_it_still_idle(scaler: Scaler, clock: Clock) -> None:
    scaler.statuses = [status(4, 0, 10, 5.0), status(4, 0, 10, 5.0), status(4, 0, 11, 5.0)]
    scaler.scale_once()
    clock.now += 61
    scaler.scale_once()  # idle for 61 s, but a request arrived just before the scale-down: left alone
    assert scaler.put == []
    scaler.statuses = [status(4, 0, 11, 5.0)]
    clock.now += 1
    scaler.scale_once()  # that request counts as activity: the idle period starts again
    assert scaler.put == []
    scaler.statuses = [status(4, 0, 11, 5.0), status(4, 0, 11, 5.0)]
    clock.now += 60
    scaler.scale_once()
    assert scaler.put == [("m", 1)]


def test_a_request_in_flight_longer_than_the_idle_period_keeps_the_workers(scaler: Scaler, clock: Clock) -> None:
    scaler.statuses = [status(4, 1, 10, 5.0), status(4, 1, 10, 5.0 + 61)]
    scaler.scale_once()
    clock.now += 61
    scaler.scale_once()
    assert scaler.put == []


def test_an_unloaded_model_and_a_restarted_host_are_forgotten(scaler: Scaler, clock: Clock) -> None:
    scaler.mms_status = 404  # MMS unloaded it meanwhile
    scaler.statuses = [status(1, 1, 10, 0.0), status(1, 1, 30, 0.9)]
    scaler.scale_once()
    clock.now += 1
    scaler.scale_once()
    assert scaler.put == [("m", 2)]
    # A restarted host counts from zero: a baseline again, no decision from counts that went backwards.
    scaler.statuses = [status(1, 1, 2, 0.1, pid=8)]
    clock.now += 1
    scaler.scale_once()
    assert scaler.put == [("m", 2)]
    scaler.statuses = [None]  # the host is restarting
    scaler.scale_once()
    scaler.statuses = [{"pid": 8, "models": {}, "activity": {}}]
    scaler.scale_once()
    assert scaler.put == [("m", 2)]


def test_mms_unreachable_is_logged_and_the_next_interval_tries_again(
    scaler: Scaler, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    scaler.mms_status = "unreachable (ConnectionRefusedError: refused)"  # type: ignore[assignment]
    scaler.statuses = [status(1, 1, 10, 0.0), status(1, 1, 30, 0.9), status(1, 1, 50, 1.8)]
    scaler.scale_once()
    clock.now += 1
    scaler.scale_once()
    clock.now += 1
    scaler.scale_once()
    assert scaler.put == [("m", 2), ("m", 2)]
    assert "MMS did not set model m to 2 workers: unreachable" in caplog.text


def test_serve_calls_mms_on_loopback_when_it_listens_everywhere(tmp_path: Path) -> None:
    assert mms_address(ServingSettings(run_dir=tmp_path, bind_host="0.0.0.0")) == "127.0.0.1"
    assert mms_address(ServingSettings(run_dir=tmp_path, bind_host="10.0.0.5")) == "10.0.0.5"


def test_the_scaler_stops_at_once_even_with_no_host(tmp_path: Path) -> None:
    scaler = WorkerScaler(ServingSettings(run_dir=tmp_path, model_host="shared"))
    scaler.start()
    scaler.stop()
    assert scaler._thread is not None
    assert not scaler._thread.is_alive()
