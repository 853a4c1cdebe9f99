"""Per-model figures from two scrapes of a Prometheus page (mme/telemetry/prometheus_figures.py), served over HTTP
from a real prometheus_client registry with `mme serve`'s metric names; quantiles as Prometheus interpolates them."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from prometheus_client import generate_latest
from published_metrics import BUSY_FIGURES, PublishedEndpoint, busy_endpoint

from mme.telemetry.model_figures import ModelFigures, frames
from mme.telemetry.prometheus_figures import (
    PrometheusSource,
    ScrapeError,
    figures_between,
    histogram_quantile,
    parse_metrics,
)

INF = math.inf


class SteppingClock:
    """10 s more at each reading."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 10.0
        return self.now


@pytest.fixture
def busy_url() -> Iterator[str]:
    with busy_endpoint().served() as url:
        yield url


def _by_model(figures: tuple[ModelFigures, ...] | list[ModelFigures]) -> dict[str, ModelFigures]:
    return {item.model: item for item in figures}


def test_rates_percentiles_and_errors_come_from_the_difference_of_two_scrapes(busy_url: str) -> None:
    source = PrometheusSource(busy_url, clock=SteppingClock())

    assert source.sample() is None  # one scrape: no rates yet
    frame = source.sample()

    assert frame is not None
    assert frame.source == f"{busy_url}/metrics"
    assert frame.span_seconds == 10.0
    figures = _by_model(frame.models)
    assert set(figures) == set(BUSY_FIGURES)
    for model, (requests, p50, p99, errors, errors_4xx, errors_5xx, loaded) in BUSY_FIGURES.items():
        got = figures[model]
        assert got.requests == requests, model
        assert got.requests_per_second == pytest.approx(requests / 10), model
        assert got.p50_ms == (pytest.approx(p50) if p50 is not None else None), model
        assert got.p99_ms == (pytest.approx(p99) if p99 is not None else None), model
        assert (got.errors, got.errors_4xx, got.errors_5xx) == (errors, errors_4xx, errors_5xx), model
        assert got.error_rate == (pytest.approx(errors / requests) if requests else None), model
        assert got.loaded is loaded, model
    assert [item.model for item in frame.busiest(3)] == ["a.tar.gz", "b.tar.gz", "other"]


def test_the_refresh_loop_yields_once_a_second_scrape_exists(busy_url: str) -> None:
    pauses: list[float] = []
    views = frames(PrometheusSource(busy_url, clock=SteppingClock()), interval_seconds=2.5, sleep=pauses.append)

    first = next(views)

    assert pauses == [2.5]
    assert _by_model(first.models)["a.tar.gz"].requests == 100
    assert _by_model(next(views).models)["a.tar.gz"].requests == 0  # nothing happened since
    assert pauses == [2.5, 2.5]


def test_a_restarted_endpoint_counts_from_zero() -> None:
    before, after = busy_endpoint(), PublishedEndpoint()
    after.request("a.tar.gz", 0.007, count=4)

    figures = _by_model(
        figures_between(
            parse_metrics(generate_latest(before.registry).decode()),
            parse_metrics(generate_latest(after.registry).decode()),
            2.0,
        )
    )

    assert figures["a.tar.gz"].requests == 4
    assert figures["a.tar.gz"].requests_per_second == 2.0
    assert figures["a.tar.gz"].p50_ms == pytest.approx(5 + 5 * 2 / 4)


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, {0.1: 0, 1.0: 10, INF: 10}, 0.55),  # rank 5 of 10 in (0.1, 1]
        (0.5, {0.1: 10, 1.0: 10, INF: 10}, 0.05),  # the lowest bucket starts at 0
        (0.99, {0.1: 0, 1.0: 0, INF: 10}, 1.0),  # past the last finite bound: that bound
        (0.5, {-1.0: 10, 0.0: 10, INF: 10}, -1.0),  # a lowest bound at or below 0 is the answer
        (0.5, {0.1: 3, 1.0: 2, INF: 4}, 0.1 * 2 / 3),  # a bucket below the one before counts as that one
    ],
)
def test_quantiles_interpolate_like_prometheus(q: float, buckets: dict[float, float], expected: float) -> None:
    assert histogram_quantile(q, buckets) == pytest.approx(expected)


@pytest.mark.parametrize("buckets", [{}, {0.1: 0, INF: 0}, {0.1: 3, 1.0: 4}, {INF: 4}])
def test_no_observations_or_no_inf_bucket_has_no_quantile(buckets: dict[float, float]) -> None:
    assert histogram_quantile(0.5, buckets) is None


def test_a_page_that_is_not_prometheus_text_or_not_there_is_refused() -> None:
    with pytest.raises(ScrapeError, match="not a Prometheus text page"):
        parse_metrics('mme_invocations_total{model="a" 1\n')
    with pytest.raises(ScrapeError, match=r"no endpoint answers at http://127.0.0.1:9/metrics"):
        PrometheusSource("http://127.0.0.1:9").sample()
