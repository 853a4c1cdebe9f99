"""More thin MMS workers for a busy model in shared mode, and back to the baseline once it is idle (``serve``).

MMS hands a worker one request at a time, so with one worker per model, concurrent requests for a model wait in
MMS's queue and the model host never sees them together (nor can it batch them). Every model starts with
``SAGEMAKER_MODEL_SERVER_WORKERS`` workers (1): models are registered by the platform (``POST /models``), not by us.
:class:`WorkerScaler` watches each model through the host's ``status`` (per-model requests in flight, integrated
over time, and the workers holding a lease on it), and sets its workers through MMS's management API on the
container's own port: ``PUT /models/{name}?min_worker=n&max_worker=n``. docs/model-host.md, "Workers per model",
gives the rule and what MMS does on a scale-down.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from handler.host.client import ModelHostClient, ModelHostUnavailableError
from handler.mms_management import mms_call
from handler.settings import ServingSettings, model_host_socket

logger = logging.getLogger(__name__)

#: A model whose workers were busy (a request in flight at the host) at least this fraction of the last interval
#: gets more workers: past it, requests arriving at random already wait in MMS's queue for about as long as a
#: request takes (a single queue at 50 % load waits half a service time on average, and more as load grows).
BUSY_FRACTION = 0.5
#: A scale-up asked for is not asked again for this long while its workers start (MMS answers 202 at once).
PENDING_SECONDS = 10.0
#: How long stopping waits for the scaler's thread to finish a call in progress.
STOP_WAIT_SECONDS = 1.0


@dataclass(frozen=True)
class ModelLoad:
    """One model over the last interval, as the host saw it."""

    #: Thin workers holding a lease on the model now: each MMS worker of the model holds one.
    workers: int
    #: Requests in flight at the host, on average over the interval (request-seconds / seconds).
    concurrency: float
    #: Seconds since a request for the model was last in flight.
    idle_seconds: float


def workers_wanted(load: ModelLoad, *, baseline: int, maximum: int, idle_after: float) -> int | None:
    """The workers ``load``'s model should have, or None to leave them as they are.

    Idle for ``idle_after`` seconds: back to ``baseline``. Busy (mean concurrency at least :data:`BUSY_FRACTION` of
    its workers): twice as many, up to ``maximum``, so a burst reaches the maximum in a few intervals. Anything
    between keeps what it has, so a model under steady load does not flap.
    """
    if load.idle_seconds >= idle_after:
        return baseline if load.workers > baseline else None
    if 0 < load.workers < maximum and load.concurrency >= BUSY_FRACTION * load.workers:
        return min(maximum, max(baseline, 2 * load.workers))
    return None


@dataclass
class _Seen:
    requests: float
    request_seconds: float
    at: float
    last_active: float


class WorkerScaler:
    """A background thread that scales each model's MMS workers between the baseline and the maximum.

    It never raises out of its thread: an MMS or host error is logged and the next interval tries again.
    """

    def __init__(self, settings: ServingSettings, *, clock: Any = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._host_pid: int | None = None
        self._seen: dict[str, _Seen] = {}
        self._asked: dict[str, tuple[int, float]] = {}
        self._host = ModelHostClient(model_host_socket(settings.run_dir), connect_timeout=5, call_timeout=10)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="scale MMS workers", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop deciding. Waits a moment for a call in progress: MMS has stopped by then, and a host call that hangs
        must not hold ``serve``'s exit (the thread is a daemon)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(STOP_WAIT_SECONDS)

    def _run(self) -> None:
        try:
            while not self._stopping.wait(self.settings.worker_scale_interval_seconds):
                try:
                    self.scale_once()
                except Exception:
                    logger.exception("scaling MMS workers failed; trying again at the next interval")
        finally:
            self._host.close()

    def scale_once(self) -> None:
        """Read the host's activity once and set the workers of every model whose count should change."""
        status = self._status()
        if status is None:
            return  # restarting: serve's supervisor brings it back, and its models come back with requests
        if status.get("pid") != self._host_pid:
            # A new host counts from zero.
            self._host_pid = status.get("pid")
            self._seen.clear()
        models: dict[str, dict[str, Any]] = status.get("models", {})
        activity: dict[str, dict[str, float]] = status.get("activity", {})
        now = self._clock()
        for name in [n for n in self._seen if n not in models]:
            del self._seen[name]
            self._asked.pop(name, None)
        scale_downs = []
        for name, model in models.items():
            load = self._observe(name, int(model.get("leases", 0)), activity.get(name, {}), now)
            if load is None:
                continue
            wanted = workers_wanted(
                load,
                baseline=self.settings.workers_per_model,
                maximum=self.settings.max_workers_per_model,
                idle_after=self.settings.worker_idle_seconds,
            )
            if wanted is None or self._pending(name, wanted, now):
                continue
            if wanted < load.workers:
                scale_downs.append((name, wanted, load, activity.get(name, {}).get("requests", 0)))
            else:
                self._ask(name, wanted, load, now)
        if scale_downs:
            self._scale_down_if_still_idle(scale_downs, now)

    def _scale_down_if_still_idle(self, scale_downs: list[tuple[str, int, ModelLoad, float]], now: float) -> None:
        # MMS ends a removed worker at once, and a request it is running gets 500 (docs/model-host.md): so a model is
        # scaled down only if a second look, just before, still finds nothing in flight and nothing new.
        status = self._status()
        if status is None or status.get("pid") != self._host_pid:
            return
        activity: dict[str, dict[str, float]] = status.get("activity", {})
        for name, wanted, load, requests in scale_downs:
            counts = activity.get(name, {})
            if counts.get("in_flight", 0) == 0 and counts.get("requests", 0) == requests:
                self._ask(name, wanted, load, now)

    def _status(self) -> dict[str, Any] | None:
        """The host's ``status`` fields, or None when it cannot be reached (it is restarting)."""
        try:
            answer = self._host.call({"op": "status"})
        except ModelHostUnavailableError:
            return None
        return answer.fields if answer.status == 200 else None

    def _observe(self, name: str, workers: int, counts: dict[str, float], now: float) -> ModelLoad | None:
        requests = float(counts.get("requests", 0))
        request_seconds = float(counts.get("request_seconds", 0.0))
        active = counts.get("in_flight", 0) > 0
        seen = self._seen.get(name)
        if seen is None or requests < seen.requests or request_seconds < seen.request_seconds:
            # First sight (or the host forgot it): a baseline, and the idle period starts now.
            self._seen[name] = _Seen(requests, request_seconds, now, now)
            return None
        if active or requests != seen.requests:
            seen.last_active = now
        elapsed = now - seen.at
        concurrency = (request_seconds - seen.request_seconds) / elapsed if elapsed > 0 else 0.0
        seen.requests, seen.request_seconds, seen.at = requests, request_seconds, now
        return ModelLoad(workers=workers, concurrency=concurrency, idle_seconds=now - seen.last_active)

    def _pending(self, name: str, workers: int, now: float) -> bool:
        """Whether ``workers`` was asked for ``name`` moments ago (its workers are still starting or stopping)."""
        asked = self._asked.get(name)
        return asked is not None and asked[0] == workers and now - asked[1] < PENDING_SECONDS

    def _ask(self, name: str, workers: int, load: ModelLoad, now: float) -> None:
        status, body = self._scale(name, workers)
        if status in (200, 202):
            self._asked[name] = (workers, now)
            logger.info(
                "model %s: %d -> %d workers (%.2f requests in flight on average, idle %.0f s)",
                name, load.workers, workers, load.concurrency, load.idle_seconds,
            )  # fmt: skip
        elif status == 404:
            logger.info("model %s was unloaded before its workers could be set to %d", name, workers)
            self._seen.pop(name, None)
            self._asked.pop(name, None)
        else:
            logger.warning("MMS did not set model %s to %d workers: %s %s", name, workers, status, body[:200])

    def _scale(self, name: str, workers: int) -> tuple[int | str, str]:
        """``PUT /models/{name}`` on MMS's management API; (status, body), or (the error, "") when unreachable.

        Asynchronous (202 at once): a scale-up does not hold this thread while the new workers start, and the next
        interval sees them as leases on the host.
        """
        path = f"/models/{quote(name, safe='')}?min_worker={workers}&max_worker={workers}&synchronous=false"
        return mms_call(self.settings, "PUT", path)
