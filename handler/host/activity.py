"""How busy each model is in the model host: requests in flight now, and their time integrated since the start.

The host counts every predict while it holds it; the worker scaler (:mod:`handler.host.scaler`) reads the counts
through the ``status`` operation and derives each model's mean concurrency between two reads. No TensorFlow here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class _Counts:
    in_flight: int
    requests: int
    request_seconds: float
    since: float


class ModelActivity:
    """Per model name: requests in flight, requests started, and request-seconds (in-flight count integrated over
    time), all cumulative since the host started, so a reader derives rates from two snapshots."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[str, _Counts] = {}

    def _advance(self, counts: _Counts, now: float) -> None:
        counts.request_seconds += counts.in_flight * (now - counts.since)
        counts.since = now

    @contextmanager
    def request(self, model: str) -> Iterator[None]:
        """Count one request for ``model`` while the block runs."""
        with self._lock:
            now = self._clock()
            counts = self._counts.setdefault(model, _Counts(0, 0, 0.0, now))
            self._advance(counts, now)
            counts.in_flight += 1
            counts.requests += 1
        try:
            yield
        finally:
            with self._lock:
                self._advance(counts, self._clock())
                counts.in_flight -= 1

    def snapshot(self, keep: Collection[str]) -> dict[str, dict[str, float]]:
        """Name -> ``{"in_flight", "requests", "request_seconds"}``; forgets idle names not in ``keep`` (models no
        longer loaded), so the counts stay as small as the set of loaded models."""
        with self._lock:
            now = self._clock()
            for name in [n for n, c in self._counts.items() if c.in_flight == 0 and n not in keep]:
                del self._counts[name]
            for counts in self._counts.values():
                self._advance(counts, now)
            return {
                name: {"in_flight": c.in_flight, "requests": c.requests, "request_seconds": c.request_seconds}
                for name, c in self._counts.items()
            }
