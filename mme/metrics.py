"""The local endpoint's Prometheus metrics (``GET /metrics``), in a registry of its own.

Per-model series carry a ``model`` label whose values are bounded: the first ``max_models`` target models seen get
their own, every later one is folded into ``other`` (:class:`ModelLabels`), so a client sending arbitrary
``TargetModel`` values cannot grow the registry without bound. The figures are those the container writes as EMF
lines (docs/observability.md): invocations, errors by status class and total latency as the front end answers them,
load time and loaded models as its cache sees them, and the model call's latency and batch size from the
container's EMF lines (:meth:`EndpointMetrics.take_emf`).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from handler.telemetry.names import BATCH_SIZE, MODEL_DIMENSION, MODEL_LATENCY

logger = logging.getLogger(__name__)

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
#: Default of ``mme serve --metrics-max-models``.
MAX_MODEL_LABELS = 50
#: The ``model`` label of every model past the limit.
OTHER = "other"


class ModelLabels:
    """The ``model`` label of each target model: its own name for the first ``limit`` models seen, else ``other``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._named: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, model: str) -> str:
        with self._lock:
            if model in self._named:
                return model
            if len(self._named) < self.limit:
                self._named.add(model)
                return model
        return OTHER


def status_class(status: int) -> str:
    """``4xx`` or ``5xx`` (a timeout answered as SageMaker's ``ModelError`` with status 0 counts as ``5xx``)."""
    return "4xx" if 400 <= status < 500 else "5xx"


class _LoadedModels(Collector):
    """``mme_model_loaded{model}``: 1 for each loaded model (``other``: how many of the folded ones), read at scrape."""

    def __init__(self, loaded: Callable[[], Collection[str]], labels: ModelLabels) -> None:
        self._loaded = loaded
        self._labels = labels

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("mme_model_loaded", "Whether each model is loaded now.", labels=["model"])
        counts: dict[str, int] = {}
        for model in self._loaded():
            label = self._labels(model)
            counts[label] = counts.get(label, 0) + 1
        for label, count in sorted(counts.items()):
            family.add_metric([label], count)
        yield family


class EndpointMetrics:
    """Cache, load and invocation metrics of one local endpoint."""

    def __init__(self, *, max_models: int = MAX_MODEL_LABELS) -> None:
        self.registry = CollectorRegistry()
        self.model_label = ModelLabels(max_models)
        r = self.registry
        self.cache_hits = Counter("mme_cache_hits", "Invocations whose model was already loaded.", registry=r)
        self.cache_misses = Counter("mme_cache_misses", "Invocations that had to wait for a load.", registry=r)
        self.loaded_models = Gauge("mme_loaded_models", "Models loaded in the container now.", registry=r)
        self.loads = Counter("mme_model_loads", "Models loaded into the container.", registry=r)
        self.unloads = Counter("mme_model_unloads", "Models unloaded from the container.", registry=r)
        self.evictions = Counter("mme_model_evictions", "Unloads to make room (507 or a budget).", registry=r)
        self.download_seconds = Histogram(
            "mme_model_download_seconds", "Time to download an archive.", buckets=_SECONDS, registry=r
        )
        self.load_seconds = Histogram(
            "mme_model_load_seconds", "Time for the container to load a model.", ["model"], buckets=_SECONDS, registry=r
        )
        self.unload_seconds = Histogram(
            "mme_model_unload_seconds", "Time for the container to unload a model.", buckets=_SECONDS, registry=r
        )
        self.invocations = Counter("mme_invocations", "Invocations per model, answered or not.", ["model"], registry=r)
        self.errors = Counter(
            "mme_invocation_errors",
            "Failed invocations per model, status class (4xx, 5xx) and error.",
            ["model", "status_class", "error"],
            registry=r,
        )
        self.latency_seconds = Histogram(
            "mme_invocation_latency_seconds",
            "Invocation latency per model, as the front end answers it.",
            ["model"],
            buckets=_SECONDS,
            registry=r,
        )
        self.model_latency_seconds = Histogram(
            "mme_model_latency_seconds",
            "Time in the model call per request, from the container's EMF lines.",
            ["model"],
            buckets=_SECONDS,
            registry=r,
        )
        self.batch_size = Histogram(
            "mme_model_batch_size",
            "Texts in the model call that answered a request, from the container's EMF lines.",
            ["model"],
            buckets=_BATCH_SIZES,
            registry=r,
        )

    def track_loaded(self, loaded: Callable[[], Collection[str]]) -> None:
        """Report ``mme_model_loaded`` from ``loaded`` (the target models loaded now) at every scrape."""
        self.registry.register(_LoadedModels(loaded, self.model_label))

    def invocation(self, model: str, seconds: float, *, status: int = 200, error: str = "") -> None:
        """One invocation answered with ``status`` (``error``: SageMaker's error code) after ``seconds``."""
        label = self.model_label(model)
        self.invocations.labels(model=label).inc()
        self.latency_seconds.labels(model=label).observe(seconds)
        if status >= 400 or error:
            self.errors.labels(model=label, status_class=status_class(status), error=error or str(status)).inc()

    def take_emf(self, document: Mapping[str, Any]) -> None:
        """Add the model-call figures of one of the container's EMF documents."""
        model = document.get(MODEL_DIMENSION)
        if not isinstance(model, str):
            return
        label = self.model_label(model)
        for milliseconds in _numbers(document.get(MODEL_LATENCY)):
            self.model_latency_seconds.labels(model=label).observe(milliseconds / 1000)
        for size in _numbers(document.get(BATCH_SIZE)):
            self.batch_size.labels(model=label).observe(size)


def _numbers(value: object) -> list[float]:
    """An EMF metric member: one number or a list of them."""
    values = value if isinstance(value, list) else [value]
    return [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]


#: How often :class:`EmfFollower` looks for new lines.
FOLLOW_EVERY_SECONDS = 0.5


class EmfFollower:
    """Reads the container's EMF lines from its log as they are written, and hands each document to ``take``.

    The container prints them on stdout, which on AWS is the endpoint's CloudWatch log and here is the container's
    log file: following the file gives ``mme serve`` the same figures CloudWatch gets. Starts at the file's end.
    """

    def __init__(self, log_file: Path, take: Callable[[Mapping[str, Any]], None]) -> None:
        self.log_file = log_file
        self._take = take
        self._stop = threading.Event()
        self._offset = log_file.stat().st_size if log_file.exists() else 0
        self._partial = b""
        self._thread = threading.Thread(target=self._run, name="EMF follower", daemon=True)

    def start(self) -> EmfFollower:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def read_new_lines(self) -> int:
        """Take the documents written since the last read; how many."""
        try:
            with self.log_file.open("rb") as log:
                log.seek(0, 2)
                if log.tell() < self._offset:  # a new file (the container restarted over it)
                    self._offset, self._partial = 0, b""
                log.seek(self._offset)
                data = log.read()
                self._offset = log.tell()
        except FileNotFoundError:
            return 0
        *lines, self._partial = (self._partial + data).split(b"\n")
        taken = 0
        for line in lines:
            if not line.startswith(b'{"_aws"'):
                continue
            try:
                document = json.loads(line)
            except ValueError:
                continue
            if isinstance(document, dict):
                self._take(document)
                taken += 1
        return taken

    def _run(self) -> None:
        while not self._stop.wait(FOLLOW_EVERY_SECONDS):
            try:
                self.read_new_lines()
            except Exception:  # the metrics must never take the endpoint down
                logger.exception("reading the container's EMF lines failed")
