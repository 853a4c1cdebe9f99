"""Per-model metrics as CloudWatch Embedded Metric Format (EMF) documents, one JSON line each on ``serve``'s stdout.

SageMaker sends the container's stdout to the endpoint's CloudWatch log group, where CloudWatch Logs turns each EMF
line into metric values. A document carries at most :data:`MAX_VALUES` values per metric (EMF's limit) and EMF has
no counts beside values, so a model's period is written as one document per 100 requests. Every request adds one
value to each of ``Errors``/``Errors4xx``/``Errors5xx`` (1 failed, 0 answered): their Sum is the count and their
Average the rate, exact over any window. Metric names: :mod:`handler.telemetry.names`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from handler.telemetry.names import (
    BATCH_SIZE,
    ENDPOINT_DIMENSION,
    ERRORS,
    ERRORS_4XX,
    ERRORS_5XX,
    INVOCATIONS,
    LOAD_TIME,
    LOADED,
    METRIC_UNITS,
    MODEL_DIMENSION,
    MODEL_LATENCY,
    TOTAL_LATENCY,
)

#: EMF accepts at most 100 values for one metric in one document.
MAX_VALUES = 100


@dataclass(frozen=True)
class RequestFigures:
    """One request's figures: HTTP status, seconds in the container and in the model call, texts in that call."""

    status: int
    latency_seconds: float
    model_latency_seconds: float | None = None
    batch_size: int | None = None


@dataclass
class ModelPeriod:
    """What one model did in one period."""

    requests: list[RequestFigures] = field(default_factory=list)
    load_seconds: list[float] = field(default_factory=list)


class MetricsAggregator:
    """Collects figures per model from any thread; :meth:`take` hands over a period and starts the next."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, ModelPeriod] = {}

    def request(self, model: str, figures: RequestFigures) -> None:
        with self._lock:
            self._models.setdefault(model, ModelPeriod()).requests.append(figures)

    def load(self, model: str, seconds: float) -> None:
        with self._lock:
            self._models.setdefault(model, ModelPeriod()).load_seconds.append(seconds)

    def take(self) -> dict[str, ModelPeriod]:
        with self._lock:
            models, self._models = self._models, {}
        return models


def _milliseconds(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _chunks(items: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(items), MAX_VALUES):
        yield items[start : start + MAX_VALUES]


def _values(period: ModelPeriod, *, loaded: bool) -> Iterator[dict[str, Any]]:
    """The metric members of one model's documents for ``period``: one mapping per document."""
    requests = list(_chunks(period.requests)) or [[]]
    loads = list(_chunks(period.load_seconds))
    for index in range(max(len(requests), len(loads))):
        chunk = requests[index] if index < len(requests) else []
        members: dict[str, Any] = {}
        if chunk:
            members[INVOCATIONS] = len(chunk)
            members[ERRORS] = [int(figures.status >= 400) for figures in chunk]
            members[ERRORS_4XX] = [int(400 <= figures.status < 500) for figures in chunk]
            members[ERRORS_5XX] = [int(figures.status >= 500) for figures in chunk]
            members[TOTAL_LATENCY] = [_milliseconds(figures.latency_seconds) for figures in chunk]
            model_latencies = [f.model_latency_seconds for f in chunk if f.model_latency_seconds is not None]
            if model_latencies:
                members[MODEL_LATENCY] = [_milliseconds(seconds) for seconds in model_latencies]
            batch_sizes = [figures.batch_size for figures in chunk if figures.batch_size is not None]
            if batch_sizes:
                members[BATCH_SIZE] = batch_sizes
        if index < len(loads):
            members[LOAD_TIME] = [_milliseconds(seconds) for seconds in loads[index]]
        if index == 0 and loaded:
            members[LOADED] = 1
        if members:
            yield members


def emf_documents(
    periods: dict[str, ModelPeriod],
    loaded: Iterable[str],
    *,
    namespace: str,
    endpoint: str,
    timestamp_ms: int,
) -> list[dict[str, Any]]:
    """The EMF documents of one period: every model that had requests or loads, or is loaded at its end."""
    loaded = set(loaded)
    documents = []
    for model in sorted(periods.keys() | loaded):
        for members in _values(periods.get(model, ModelPeriod()), loaded=model in loaded):
            directive = {
                "Namespace": namespace,
                "Dimensions": [[ENDPOINT_DIMENSION, MODEL_DIMENSION]],
                "Metrics": [{"Name": name, "Unit": METRIC_UNITS[name]} for name in members],
            }
            documents.append(
                {
                    "_aws": {"Timestamp": timestamp_ms, "CloudWatchMetrics": [directive]},
                    ENDPOINT_DIMENSION: endpoint,
                    MODEL_DIMENSION: model,
                    **members,
                }
            )
    return documents
