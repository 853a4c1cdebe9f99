"""Per-model figures over a span of time (what `mme top` shows), the sources they come from, and the refresh loop.

A source is a local endpoint's Prometheus page (`mme.telemetry.prometheus_figures`) or a stage's CloudWatch metrics
(`mme.telemetry.cloudwatch_figures`); each turns what it reads into one `FiguresFrame` per sample.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True, kw_only=True)
class ModelFigures:
    """One model's requests over a frame's span.

    `p50_ms`/`p99_ms` are None without a latency observed in the span; `error_rate` (errors / requests, 0..1) is None
    without requests; `loaded` is None when the source cannot tell.
    """

    model: str
    requests: int
    requests_per_second: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    errors_4xx: int
    errors_5xx: int
    error_rate: float | None
    loaded: bool | None


@dataclass(frozen=True, kw_only=True)
class FiguresFrame:
    """Every model's figures over the `span_seconds` that ended at `taken_at`, as `source` tells them."""

    source: str
    taken_at: datetime
    span_seconds: float
    models: tuple[ModelFigures, ...]

    def busiest(self, limit: int) -> list[ModelFigures]:
        """At most `limit` models, most requests per second first (then most errors, then by name)."""
        ranked = sorted(self.models, key=lambda figures: (-figures.requests_per_second, -figures.errors, figures.model))
        return ranked[:limit]


class FigureSource(Protocol):
    """Where per-model figures come from."""

    #: What the source reads, for the view's title (a URL, or a namespace and endpoint).
    description: str

    def sample(self) -> FiguresFrame | None:
        """Read the source once: the figures up to now, or None while there is not enough to compute them yet (a
        first scrape of counters gives no rates).

        Raises:
            MmeError: the source cannot be read; the message says what to check.
        """
        ...


def frames(
    source: FigureSource, *, interval_seconds: float, sleep: Callable[[float], None] | None = None
) -> Iterator[FiguresFrame]:
    """Sample `source` every `interval_seconds` (waiting with `sleep`, default `time.sleep`), yielding each frame it
    gives; endless (the caller stops)."""
    while True:
        frame = source.sample()
        if frame is not None:
            yield frame
        (sleep or time.sleep)(interval_seconds)


def error_rate(errors: float, requests: float) -> float | None:
    """Errors per request (0..1), or None when there were neither requests nor errors."""
    if requests <= 0 and errors <= 0:
        return None
    return min(1.0, errors / max(requests, errors))
