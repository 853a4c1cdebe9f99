"""Per-model figures from a local endpoint's Prometheus page (``mme serve``'s ``GET /metrics``).

What is read, per ``model`` label (``other`` folds the models beyond the endpoint's label limit):

- ``mme_invocations_total``: requests;
- ``mme_invocation_errors_total{status_class="4xx"|"5xx", error}``: failed requests;
- ``mme_invocation_latency_seconds_bucket{le}``: each request's total latency at the front end;
- ``mme_model_loaded``: 1 for each model loaded now (``other``: how many of the folded ones); a model it does not
  list is not loaded.

Counters only ever grow, so figures come from two scrapes: rates are differences over the time between them, and
p50/p99 are interpolated from the differences of the latency buckets as Prometheus's ``histogram_quantile`` does. A
series that went down between the scrapes (the endpoint restarted) counts from zero.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from mme import MmeError
from mme.telemetry.model_figures import FiguresFrame, ModelFigures, error_rate

INVOCATIONS = "mme_invocations_total"
ERRORS = "mme_invocation_errors_total"
LATENCY_BUCKETS = "mme_invocation_latency_seconds_bucket"
LOADED = "mme_model_loaded"
#: ``status_class`` values of `ERRORS`.
CLIENT_ERRORS = "4xx"
SERVER_ERRORS = "5xx"


class ScrapeError(MmeError):
    """The endpoint's Prometheus page cannot be read."""


@dataclass
class ModelCounters:
    """One model's series in one scrape: counters as totals, latency buckets as ``le -> cumulative count``."""

    invocations: float = 0.0
    errors_by_class: dict[str, float] = field(default_factory=dict)
    latency_buckets: dict[float, float] = field(default_factory=dict)
    loaded: bool | None = None


def parse_metrics(text: str) -> dict[str, ModelCounters]:
    """The per-model series of a Prometheus text page; series without a ``model`` label are ignored.

    Raises:
        ScrapeError: the text is not in Prometheus's text format.
    """
    from prometheus_client.parser import text_string_to_metric_families

    models: dict[str, ModelCounters] = {}
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as error:
        raise ScrapeError(f"not a Prometheus text page: {error}") from None
    samples = [sample for family in families for sample in family.samples]
    for sample in samples:
        model = sample.labels.get("model")
        if model is None:
            continue
        counters = models.setdefault(model, ModelCounters())
        if sample.name == INVOCATIONS:
            counters.invocations += sample.value
        elif sample.name == ERRORS:
            status_class = sample.labels.get("status_class", "")
            counters.errors_by_class[status_class] = counters.errors_by_class.get(status_class, 0.0) + sample.value
        elif sample.name == LATENCY_BUCKETS and "le" in sample.labels:
            bound = float(sample.labels["le"])
            counters.latency_buckets[bound] = counters.latency_buckets.get(bound, 0.0) + sample.value
        elif sample.name == LOADED:
            counters.loaded = sample.value >= 1
    if any(family.name == LOADED for family in families):
        # The endpoint lists the models loaded now: one it does not list is not loaded.
        for counters in models.values():
            if counters.loaded is None:
                counters.loaded = False
    return models


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The `q`-quantile (0..1) of a histogram given as ``upper bound -> cumulative count`` (the ``+Inf`` bucket
    included), interpolated linearly inside its bucket as Prometheus's ``histogram_quantile`` does: the lowest bucket
    starts at 0, and a quantile in the ``+Inf`` bucket is the highest finite bound.

    Returns None without observations or without a ``+Inf`` bucket.
    """
    ordered = sorted(buckets.items())
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        return None
    counts: list[float] = []
    for _, count in ordered:  # cumulative counts never fall (a reset bucket would make them)
        counts.append(max(count, counts[-1]) if counts else count)
    observations = counts[-1]
    if observations <= 0:
        return None
    rank = q * observations
    index = next((i for i, count in enumerate(counts[:-1]) if count >= rank), len(counts) - 1)
    if index == len(counts) - 1:
        return ordered[-2][0]
    upper = ordered[index][0]
    if index == 0 and upper <= 0:
        return upper
    lower, below = (ordered[index - 1][0], counts[index - 1]) if index > 0 else (0.0, 0.0)
    return lower + (upper - lower) * (rank - below) / (counts[index] - below)


def _grown(before: float, after: float) -> float:
    """What a counter added between two scrapes (all of `after` when it went down: the endpoint restarted)."""
    return after - before if after >= before else after


def figures_between(
    before: dict[str, ModelCounters], after: dict[str, ModelCounters], seconds: float
) -> tuple[ModelFigures, ...]:
    """Each model of `after`: its requests, latency and errors since `before`, taken `seconds` earlier."""
    figures = []
    for model, now in sorted(after.items()):
        then = before.get(model, ModelCounters())
        requests = _grown(then.invocations, now.invocations)
        by_class = {
            status_class: _grown(then.errors_by_class.get(status_class, 0.0), count)
            for status_class, count in now.errors_by_class.items()
        }
        errors = sum(by_class.values())
        buckets = {
            bound: _grown(then.latency_buckets.get(bound, 0.0), count) for bound, count in now.latency_buckets.items()
        }
        p50, p99 = histogram_quantile(0.5, buckets), histogram_quantile(0.99, buckets)
        figures.append(
            ModelFigures(
                model=model,
                requests=round(requests),
                requests_per_second=requests / seconds if seconds > 0 else 0.0,
                p50_ms=p50 * 1000 if p50 is not None else None,
                p99_ms=p99 * 1000 if p99 is not None else None,
                errors=round(errors),
                errors_4xx=round(by_class.get(CLIENT_ERRORS, 0.0)),
                errors_5xx=round(by_class.get(SERVER_ERRORS, 0.0)),
                error_rate=error_rate(errors, requests),
                loaded=now.loaded,
            )
        )
    return tuple(figures)


def scrape(url: str, *, timeout: float = 10.0) -> str:
    """The text of `url` (a Prometheus page).

    Raises:
        ScrapeError: nothing answers, or it answers with an error status.
    """
    import requests

    try:
        response = requests.get(url, timeout=timeout)
    except requests.RequestException as error:
        raise ScrapeError(
            f"no endpoint answers at {url} ({type(error).__name__}): start one with `mme serve --store ...`, or check "
            "--endpoint-url"
        ) from None
    if not response.ok:
        raise ScrapeError(f"{url} answered HTTP {response.status_code}: {response.text[:300]}")
    return response.text


class PrometheusSource:
    """A local endpoint's figures between its last two scrapes (`FigureSource`)."""

    def __init__(self, endpoint_url: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        """`endpoint_url`: the endpoint's root (``http://127.0.0.1:8080``); its page is ``/metrics`` there.
        `clock` measures the seconds between scrapes."""
        self.url = endpoint_url.rstrip("/") + "/metrics"
        self.description = self.url
        self._clock = clock
        self._previous: tuple[float, dict[str, ModelCounters]] | None = None

    def sample(self) -> FiguresFrame | None:
        """Scrape now; the figures since the previous scrape, or None on the first.

        Raises:
            ScrapeError: the page cannot be read or parsed.
        """
        counters = parse_metrics(scrape(self.url))
        now = self._clock()
        previous, self._previous = self._previous, (now, counters)
        if previous is None:
            return None
        seconds = now - previous[0]
        return FiguresFrame(
            source=self.description,
            taken_at=datetime.now(UTC),
            span_seconds=seconds,
            models=figures_between(previous[1], counters, seconds),
        )
