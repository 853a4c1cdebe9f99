"""``serve``'s side of telemetry: takes the workers' reports, writes EMF lines and captured records.

One collector per container, in ``serve`` (both model host modes): the workers report over a Unix socket
(:mod:`handler.telemetry.reporter`); the collector adds each request to its model's metrics, prints one EMF line per
model and document every ``MME_METRICS_INTERVAL_SECONDS`` on stdout (the endpoint's CloudWatch log on AWS), and hands
captured records to the :class:`~handler.telemetry.capture.CaptureWriter`. It starts before MMS, so the first worker
finds it, and stops after MMS, writing the last period and flushing the capture buffer within
``MME_CAPTURE_FLUSH_SECONDS``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socketserver
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any, TextIO

from handler.host.protocol import ConnectionClosedError, ProtocolError, receive_message
from handler.settings import ServingSettings, telemetry_socket
from handler.telemetry.capture import CaptureWriter, sink_for
from handler.telemetry.metrics import MetricsAggregator, RequestFigures, emf_documents

logger = logging.getLogger(__name__)


class _ReportHandler(socketserver.BaseRequestHandler):
    """One worker's reports, in order, until it goes away."""

    server: _ReportServer

    def handle(self) -> None:
        collector = self.server.collector
        model_names: set[str] = set()
        try:
            while True:
                try:
                    message = receive_message(self.request)
                except (ConnectionClosedError, ProtocolError, OSError):
                    return
                model_name = str(message.fields.get("model_name", ""))
                if model_name not in model_names:
                    model_names.add(model_name)
                    collector.worker_connected(model_name)
                try:
                    collector.take(message.fields, message.payload)
                except Exception:  # a malformed report must not end the worker's connection, nor serve
                    logger.exception("telemetry: a report could not be taken")
        finally:
            # The worker exited: MMS stops a model's workers when it unloads it.
            for model_name in model_names:
                collector.worker_gone(model_name)


class _ReportServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, collector: TelemetryCollector) -> None:
        self.collector = collector
        path = telemetry_socket(collector.settings.run_dir)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by a serve that was killed
        super().__init__(str(path), _ReportHandler)
        path.chmod(0o600)


class TelemetryCollector:
    """Per-model metrics and request capture of one container (docs/observability.md)."""

    def __init__(self, settings: ServingSettings, *, out: TextIO | None = None) -> None:
        self.settings = settings
        self._out = out or sys.stdout
        self._out_lock = threading.Lock()
        self.metrics = MetricsAggregator()
        self.capture: CaptureWriter | None = None
        if settings.capture_destination:
            self.capture = CaptureWriter(
                sink_for(
                    settings.capture_destination,
                    attempts=settings.capture_write_attempts,
                    kms_key_id=settings.capture_kms_key_id,
                ),
                batch_bytes=settings.capture_batch_bytes,
                batch_seconds=settings.capture_batch_seconds,
                buffer_bytes=settings.capture_buffer_mb * 1024 * 1024,
            )
        self.reports_dropped = 0
        self._names_lock = threading.Lock()
        #: MMS's model name -> the target model its requests name; loads reported before the first request.
        self._targets: dict[str, str] = {}
        self._pending_loads: dict[str, list[float]] = {}
        #: MMS's model name -> its workers connected now. A model is loaded while it has one: asking MMS instead
        #: (GET /models) while a load hangs held up MMS's unregistering of that model for minutes.
        self._workers: Counter[str] = Counter()
        self._stopping = threading.Event()
        self._server: _ReportServer | None = None
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._server = _ReportServer(self)
        self._threads = [threading.Thread(target=self._server.serve_forever, name="telemetry", daemon=True)]
        if self.settings.metrics_enabled:
            self._threads.append(threading.Thread(target=self._emit_every_interval, name="EMF", daemon=True))
        for thread in self._threads:
            thread.start()
        logger.info(
            "telemetry: per-model metrics %s; capture %s",
            f"every {self.settings.metrics_interval_seconds} s" if self.settings.metrics_enabled else "off",
            f"to {self.settings.capture_destination}" if self.capture else "off",
        )

    def worker_connected(self, model_name: str) -> None:
        with self._names_lock:
            self._workers[model_name] += 1

    def worker_gone(self, model_name: str) -> None:
        """A worker of ``model_name`` went away; with the last one, the model is unloaded and forgotten."""
        with self._names_lock:
            self._workers[model_name] -= 1
            if self._workers[model_name] <= 0:
                del self._workers[model_name]
                self._targets.pop(model_name, None)
                self._pending_loads.pop(model_name, None)

    def take(self, fields: dict[str, Any], payload: bytes) -> None:
        """One worker report (:mod:`handler.telemetry.reporter` writes them)."""
        dropped = int(fields.get("dropped") or 0)
        if dropped:
            self.reports_dropped += dropped
            logger.error("telemetry: a worker dropped %d reports (%d so far)", dropped, self.reports_dropped)
        model_name = str(fields.get("model_name", ""))
        if fields.get("kind") == "load":
            if fields.get("ok") and self.settings.metrics_enabled:
                # MMS's name is opaque: the load counts for the target model its first request names.
                with self._names_lock:
                    self._pending_loads.setdefault(model_name, []).append(float(fields["seconds"]))
            return
        model = str(fields.get("model") or model_name)
        with self._names_lock:
            self._targets[model_name] = model
            pending = self._pending_loads.pop(model_name, [])
        for seconds in pending:
            self.metrics.load(model, seconds)
        if self.settings.metrics_enabled:
            model_latency = fields.get("model_latency")
            batch_size = fields.get("batch_size")
            self.metrics.request(
                model,
                RequestFigures(
                    status=int(fields["status"]),
                    latency_seconds=float(fields["latency"]),
                    model_latency_seconds=None if model_latency is None else float(model_latency),
                    batch_size=None if batch_size is None else int(batch_size),
                ),
            )
        if payload and self.capture is not None:
            received = datetime.fromtimestamp(float(fields.get("received") or time.time()), UTC)
            self.capture.add(model, received, payload)

    def emit(self) -> int:
        """Print the EMF documents of the period that ends now; how many."""
        with self._names_lock:
            # Only a model's first request names it (MMS's name is a hash): until then it is neither counted as
            # loaded nor are its loads.
            loaded = [self._targets[name] for name in self._workers if name in self._targets]
        periods = self.metrics.take()
        documents = emf_documents(
            periods,
            loaded,
            namespace=self.settings.metrics_namespace,
            endpoint=self.settings.metrics_endpoint,
            timestamp_ms=int(time.time() * 1000),
        )
        lines = "".join(json.dumps(document, separators=(",", ":")) + "\n" for document in documents)
        if lines:
            with self._out_lock:
                self._out.write(lines)
                self._out.flush()
        return len(documents)

    def _emit_every_interval(self) -> None:
        while not self._stopping.wait(self.settings.metrics_interval_seconds):
            try:
                self.emit()
            except Exception:  # metrics must never end serve
                logger.exception("telemetry: writing the EMF lines failed")

    def stop(self) -> None:
        """After MMS has stopped: take no more reports, print the last period, write what capture holds."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self.settings.metrics_enabled:
            with contextlib.suppress(Exception):
                self.emit()
        if self.capture is not None:
            counts = self.capture.close(self.settings.capture_flush_seconds)
            logger.info(
                "capture: %d records taken, %d written in %d objects, %d dropped (buffer full), %d failed",
                counts.records, counts.written, counts.objects, counts.dropped, counts.failed,
            )  # fmt: skip
