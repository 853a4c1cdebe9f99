"""Per-model metrics as they are published, for the tests of `mme top`: a local endpoint's Prometheus page (a real
`prometheus_client` registry with `mme serve`'s metric names, served over HTTP) and the container's CloudWatch
metrics (what CloudWatch stores from its embedded-metric-format lines, put into moto), plus the one statistic moto
does not compute: percentiles."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client import generate_latest

from handler.telemetry import names
from mme.metrics import EndpointMetrics


class PublishedEndpoint:
    """`mme serve`'s metrics (the real :class:`mme.metrics.EndpointMetrics`) fed by hand; `changes` are applied one
    per scrape, after it, so consecutive scrapes see different counts. `loaded` holds the models loaded now."""

    def __init__(self) -> None:
        self.metrics = EndpointMetrics()
        self.registry = self.metrics.registry
        self.loaded: set[str] = set()
        self.metrics.track_loaded(lambda: sorted(self.loaded))
        self.changes: list[Callable[[PublishedEndpoint], None]] = []
        self.scrapes = 0
        self._lock = threading.Lock()

    def request(self, model: str, seconds: float, *, status: int = 200, count: int = 1) -> None:
        """`count` requests to `model` that took `seconds` each and were answered with `status`."""
        label = self.metrics.model_label(model)
        for _ in range(count):
            self.metrics.invocation(model, seconds, status=status, error=f"HTTP{status}" if status >= 400 else "")
            if status < 400:
                self.metrics.model_latency_seconds.labels(model=label).observe(seconds * 0.8)
                self.metrics.batch_size.labels(model=label).observe(1)

    def page(self) -> bytes:
        """The page as scraped now; applies the next change afterwards."""
        with self._lock:
            text = generate_latest(self.registry)
            self.scrapes += 1
            if self.changes:
                self.changes.pop(0)(self)
            return text

    @contextmanager
    def served(self) -> Iterator[str]:
        """Serve the page at ``<url>/metrics`` on a free loopback port; yields the endpoint's URL."""
        published = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/metrics":
                    self.send_error(404)
                    return
                body = published.page()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


def busy_endpoint() -> PublishedEndpoint:
    """The scenario of the `mme top` tests. Before the first scrape: 50 requests to a.tar.gz at 30 ms; a.tar.gz and
    c.tar.gz loaded. Between the first and the second: a.tar.gz 100 requests (40 at 7 ms, 58 at 20 ms of which 3
    answered 400 and 1 answered 500, 2 at 300 ms); b.tar.gz 10 at 4 ms and loaded; "other" (the models beyond the
    label limit) 5 at 50 ms, all answered 503, none loaded; c.tar.gz nothing."""
    endpoint = PublishedEndpoint()
    endpoint.request("a.tar.gz", 0.03, count=50)
    endpoint.loaded |= {"a.tar.gz", "c.tar.gz"}

    def traffic(e: PublishedEndpoint) -> None:
        e.request("a.tar.gz", 0.007, count=40)
        e.request("a.tar.gz", 0.02, count=54)
        e.request("a.tar.gz", 0.02, status=400, count=3)
        e.request("a.tar.gz", 0.02, status=500)
        e.request("a.tar.gz", 0.3, count=2)
        e.request("b.tar.gz", 0.004, count=10)
        e.loaded.add("b.tar.gz")
        e.request("other", 0.05, status=503, count=5)

    endpoint.changes.append(traffic)
    return endpoint


#: What the scenario gives between the two scrapes, by model: requests, p50 and p99 (ms, as Prometheus's
#: histogram_quantile interpolates them in the buckets the requests fell in), errors, 4xx, 5xx, loaded.
BUSY_FIGURES = {
    # p50: rank 50 of 100 is the 10th of 58 in (10, 25] ms; p99: rank 99 is the 1st of 2 in (250, 500] ms.
    "a.tar.gz": (100, 10 + 15 * 10 / 58, 250 + 250 * 1 / 2, 4, 3, 1, True),
    # rank 5 and 9.9 of 10, all in (0, 5] ms.
    "b.tar.gz": (10, 5 * 5 / 10, 5 * 9.9 / 10, 0, 0, 0, True),
    # rank 2.5 and 4.95 of 5, all in (25, 50] ms; none of the folded models is loaded.
    "other": (5, 25 + 25 * 2.5 / 5, 25 + 25 * 4.95 / 5, 5, 0, 5, False),
    "c.tar.gz": (0, None, None, 0, 0, 0, True),
}


# ---- CloudWatch ----------------------------------------------------------------------------------------------


def put_emf_values(
    cloudwatch: Any, *, endpoint: str, model: str, metric: str, values: list[float], at: datetime
) -> None:
    """What CloudWatch stores from the container's EMF lines for one model and metric in one minute: each value
    with the endpoint and model dimensions and the metric's unit (`names.METRIC_UNITS`)."""
    counts: dict[float, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    cloudwatch.put_metric_data(
        Namespace=names.METRICS_NAMESPACE,
        MetricData=[
            {
                "MetricName": metric,
                "Dimensions": [
                    {"Name": names.ENDPOINT_DIMENSION, "Value": endpoint},
                    {"Name": names.MODEL_DIMENSION, "Value": model},
                ],
                "Timestamp": at,
                "Values": list(counts),
                "Counts": [float(count) for count in counts.values()],
                "Unit": names.METRIC_UNITS[metric],
            }
        ],
    )


def teach_moto_percentiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto 5.2 answers GetMetricData's ``pNN`` statistics with nothing it can serialize (it computes Sum, Average,
    Minimum, Maximum and SampleCount only); give it nearest-rank percentiles of the raw values, which is what
    CloudWatch returns for so few values."""
    from moto.cloudwatch.models import Statistics

    computed = Statistics.get_statistics_for_type

    def with_percentiles(self: Statistics, stat: str) -> Any:
        if stat.startswith("p") and stat[1:].replace(".", "", 1).isdigit():
            values = sorted(self.metric_single_values_list)
            if not values:
                return None
            rank = math.ceil(float(stat[1:]) / 100 * len(values))
            return values[max(rank, 1) - 1]
        return computed(self, stat)

    monkeypatch.setattr(Statistics, "get_statistics_for_type", with_percentiles)
