"""Per-model figures of a stage's endpoint from CloudWatch (mme/telemetry/cloudwatch_figures.py), against metrics put
into moto as CloudWatch stores the container's EMF lines. moto computes no percentiles; `teach_moto_percentiles`
gives it nearest-rank ones (published_metrics.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from moto import mock_aws
from published_metrics import put_emf_values, teach_moto_percentiles

from handler.telemetry import names
from mme.telemetry.cloudwatch_figures import CloudWatchSource

REGION = "eu-west-1"
ENDPOINT = "Mme-dev-Endpoint"
#: Half a minute into a minute: the window is the five whole minutes before it.
NOW = datetime.now(UTC).replace(second=30, microsecond=0)
END = NOW.replace(second=0)


@pytest.fixture
def cloudwatch(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(name, value)
    teach_moto_percentiles(monkeypatch)
    with mock_aws():
        yield boto3.client("cloudwatch", region_name=REGION)


def _put(
    cloudwatch: Any, model: str, metric: str, values: list[float], minutes_ago: float, *, endpoint: str = ENDPOINT
):
    put_emf_values(
        cloudwatch,
        endpoint=endpoint,
        model=model,
        metric=metric,
        values=values,
        at=END - timedelta(minutes=minutes_ago),
    )


def _requests(
    cloudwatch: Any, model: str, latencies_ms: list[float], minutes_ago: float, *, c4xx: int, c5xx: int
) -> None:
    """Requests as the container publishes them: 1 Invocation each, its TotalLatency, and Errors, Errors4xx and
    Errors5xx of 1 for the failed ones (the first `c4xx`, then `c5xx`) and 0 for the others."""
    n = len(latencies_ms)
    failed = [1.0] * (c4xx + c5xx) + [0.0] * (n - c4xx - c5xx)
    _put(cloudwatch, model, names.INVOCATIONS, [1.0] * n, minutes_ago)
    _put(cloudwatch, model, names.TOTAL_LATENCY, latencies_ms, minutes_ago)
    _put(cloudwatch, model, names.ERRORS, failed, minutes_ago)
    _put(cloudwatch, model, names.ERRORS_4XX, [1.0] * c4xx + [0.0] * (n - c4xx), minutes_ago)
    _put(cloudwatch, model, names.ERRORS_5XX, [0.0] * c4xx + [1.0] * c5xx + [0.0] * (n - c4xx - c5xx), minutes_ago)


@pytest.fixture
def busy_stage(cloudwatch: Any) -> Any:
    """a.tar.gz: 100 requests at 1..100 ms 2 minutes ago (3 answered 4xx, 1 5xx), loaded a minute ago; b.tar.gz:
    10 at 5 ms, last loaded 4 minutes ago; traffic outside the window, and another endpoint's model."""
    _requests(cloudwatch, "a.tar.gz", [float(ms) for ms in range(1, 101)], 2, c4xx=3, c5xx=1)
    _put(cloudwatch, "a.tar.gz", names.LOADED, [1.0], 1)
    _requests(cloudwatch, "b.tar.gz", [5.0] * 10, 3, c4xx=0, c5xx=0)
    _put(cloudwatch, "b.tar.gz", names.LOADED, [1.0], 4)
    _put(cloudwatch, "a.tar.gz", names.INVOCATIONS, [1.0] * 50, 10)  # before the window
    _put(cloudwatch, "a.tar.gz", names.INVOCATIONS, [1.0] * 50, -0.25)  # in the minute not over yet
    _put(cloudwatch, "x.tar.gz", names.INVOCATIONS, [1.0] * 70, 2, endpoint="Mme-qa-Endpoint")
    return cloudwatch


def _calls(client: Any, operation: str) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    client.meta.events.register(
        f"provide-client-params.cloudwatch.{operation}", lambda params, **_: calls.append(params)
    )
    return calls


def test_figures_over_the_last_five_whole_minutes_of_the_endpoint_s_models(busy_stage: Any) -> None:
    frame = CloudWatchSource(busy_stage, ENDPOINT, clock=lambda: NOW).sample()

    assert frame.span_seconds == 300
    assert frame.taken_at == END
    assert frame.source == f"CloudWatch {names.METRICS_NAMESPACE}, endpoint {ENDPOINT}"
    figures = {item.model: item for item in frame.models}
    assert set(figures) == {"a.tar.gz", "b.tar.gz"}
    a, b = figures["a.tar.gz"], figures["b.tar.gz"]
    assert (a.requests, a.requests_per_second) == (100, pytest.approx(100 / 300))
    assert (a.p50_ms, a.p99_ms) == (50.0, 99.0)
    assert (a.errors, a.errors_4xx, a.errors_5xx, a.error_rate) == (4, 3, 1, pytest.approx(0.04))
    assert a.loaded is True
    assert (b.requests, b.p50_ms, b.p99_ms, b.errors, b.error_rate) == (10, 5.0, 5.0, 0, 0.0)
    assert b.loaded is False  # its last Loaded is older than two periods
    assert [item.model for item in frame.busiest(1)] == ["a.tar.gz"]


def test_one_get_metric_data_call_asks_every_figure_of_every_model(busy_stage: Any) -> None:
    calls = _calls(busy_stage, "GetMetricData")

    CloudWatchSource(busy_stage, ENDPOINT, clock=lambda: NOW).sample()

    (call,) = calls
    assert call["StartTime"] == END - timedelta(minutes=5)
    assert call["EndTime"] == END
    asked = {
        (query["MetricStat"]["Metric"]["MetricName"], query["MetricStat"]["Stat"], query["MetricStat"]["Period"])
        for query in call["MetricDataQueries"]
        if query["Id"].endswith("_0")
    }
    assert asked == {
        (names.INVOCATIONS, "Sum", 300),
        (names.TOTAL_LATENCY, "p50", 300),
        (names.TOTAL_LATENCY, "p99", 300),
        (names.ERRORS, "Sum", 300),
        (names.ERRORS, "Average", 300),
        (names.ERRORS_4XX, "Sum", 300),
        (names.ERRORS_5XX, "Sum", 300),
        (names.LOADED, "Maximum", 60),
    }
    assert len(call["MetricDataQueries"]) == 2 * len(asked)


def test_a_sample_in_the_same_minute_asks_cloudwatch_nothing_new(busy_stage: Any) -> None:
    calls = _calls(busy_stage, "GetMetricData")
    clock = [NOW]
    source = CloudWatchSource(busy_stage, ENDPOINT, clock=lambda: clock[0])

    first = source.sample()
    clock[0] = NOW + timedelta(seconds=20)
    assert source.sample() is first
    clock[0] = NOW + timedelta(seconds=40)
    later = source.sample()

    assert len(calls) == 2
    assert later.taken_at == END + timedelta(minutes=1)


def test_more_than_500_queries_are_split_across_calls(cloudwatch: Any) -> None:
    models = [f"m{index:03}.tar.gz" for index in range(80)]
    for index, model in enumerate(models):
        _put(cloudwatch, model, names.INVOCATIONS, [1.0] * (index + 1), 2)
    calls = _calls(cloudwatch, "GetMetricData")

    frame = CloudWatchSource(cloudwatch, ENDPOINT, clock=lambda: NOW).sample()

    assert [len(call["MetricDataQueries"]) for call in calls] == [500, 140]
    assert {item.model: item.requests for item in frame.models} == {model: i + 1 for i, model in enumerate(models)}


def test_an_endpoint_without_metrics_has_no_models(cloudwatch: Any) -> None:
    frame = CloudWatchSource(cloudwatch, ENDPOINT, clock=lambda: NOW).sample()
    assert frame.models == ()
