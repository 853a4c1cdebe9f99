"""Per-model figures of a deployed stage's endpoint from the container's CloudWatch metrics.

The container publishes its per-model metrics (embedded metric format) in `METRICS_NAMESPACE` with the dimensions
`ENDPOINT_DIMENSION` and `MODEL_DIMENSION` (`handler.telemetry.names`). A sample finds the endpoint's models with
ListMetrics, then asks GetMetricData, in one call of up to 500 queries (more calls only past 62 models), for each
model over the last few whole minutes: the Sum of Invocations (requests, and requests per second over the window),
p50 and p99 of TotalLatency, the Sum of Errors, Errors4xx and Errors5xx and the Average of Errors (the error rate),
and whether a Loaded datapoint arrived in the last two periods.

CloudWatch's figures change once a period (a minute), and every metric asked for is billed, so a sample within the
same period as the previous one returns the previous frame without asking again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from handler.telemetry.names import (
    ENDPOINT_DIMENSION,
    ERRORS,
    ERRORS_4XX,
    ERRORS_5XX,
    INVOCATIONS,
    LOADED,
    METRICS_NAMESPACE,
    MODEL_DIMENSION,
    TOTAL_LATENCY,
)
from mme.telemetry.model_figures import FiguresFrame, ModelFigures

#: GetMetricData's limit of queries per call.
MAX_QUERIES = 500
#: ListMetrics's filter: models that published anything in the last three hours.
RECENTLY_ACTIVE = "PT3H"


@dataclass(frozen=True)
class _Query:
    """One GetMetricData query: the statistic `stat` of `metric`, over the whole window (one datapoint) or per
    period."""

    metric: str
    stat: str
    whole_window: bool


#: Per model, by the name its figure is read under.
_QUERIES = {
    "requests": _Query(INVOCATIONS, "Sum", whole_window=True),
    "p50": _Query(TOTAL_LATENCY, "p50", whole_window=True),
    "p99": _Query(TOTAL_LATENCY, "p99", whole_window=True),
    "errors": _Query(ERRORS, "Sum", whole_window=True),
    "error_rate": _Query(ERRORS, "Average", whole_window=True),
    "errors_4xx": _Query(ERRORS_4XX, "Sum", whole_window=True),
    "errors_5xx": _Query(ERRORS_5XX, "Sum", whole_window=True),
    "loaded": _Query(LOADED, "Maximum", whole_window=False),
}


def _utc_now() -> datetime:
    return datetime.now(UTC)


class CloudWatchSource:
    """A stage endpoint's figures over the last `window_minutes` whole minutes (`FigureSource`)."""

    def __init__(
        self,
        cloudwatch: Any,
        endpoint_name: str,
        *,
        namespace: str = METRICS_NAMESPACE,
        window_minutes: int = 5,
        period_seconds: int = 60,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        """`cloudwatch`: a boto3 CloudWatch client; `endpoint_name`: the EndpointName dimension's value.
        `period_seconds` is how often the container publishes Loaded (a model is loaded when a datapoint arrived in
        the last two periods); `clock` gives the current time (aware)."""
        self._cloudwatch = cloudwatch
        self.endpoint_name = endpoint_name
        self.namespace = namespace
        self.window = timedelta(minutes=window_minutes)
        self.period_seconds = period_seconds
        self._clock = clock
        self._last: FiguresFrame | None = None
        self.description = f"CloudWatch {namespace}, endpoint {endpoint_name}"

    @classmethod
    def of(cls, session: Any, endpoint_name: str) -> CloudWatchSource:
        """The source for `endpoint_name`, read with a CloudWatch client of the boto3 `session` (standard retries)."""
        from botocore.config import Config

        client = session.client("cloudwatch", config=Config(retries={"mode": "standard", "max_attempts": 5}))
        return cls(client, endpoint_name)

    def models(self) -> list[str]:
        """The models that published metrics for the endpoint recently (ListMetrics, every page), sorted."""
        models = set()
        paginator = self._cloudwatch.get_paginator("list_metrics")
        pages = paginator.paginate(
            Namespace=self.namespace,
            Dimensions=[{"Name": ENDPOINT_DIMENSION, "Value": self.endpoint_name}],
            RecentlyActive=RECENTLY_ACTIVE,
        )
        for page in pages:
            for metric in page.get("Metrics", []):
                dimensions = {item["Name"]: item["Value"] for item in metric.get("Dimensions", [])}
                if set(dimensions) == {ENDPOINT_DIMENSION, MODEL_DIMENSION}:
                    models.add(str(dimensions[MODEL_DIMENSION]))
        return sorted(models)

    def sample(self) -> FiguresFrame:
        """The figures over the window that ends at the last whole minute (the previous frame when that has not
        moved since the previous sample).

        Raises:
            botocore.exceptions.ClientError: CloudWatch refused (worded by the CLI).
        """
        now = self._clock().astimezone(UTC)
        end = now.replace(second=0, microsecond=0)
        if self._last is not None and self._last.taken_at == end:
            return self._last
        start = end - self.window
        models = self.models()
        values = self._values(self._queries(models, start, end), start, end)
        recent = end - timedelta(seconds=2 * self.period_seconds)
        seconds = self.window.total_seconds()
        figures = []
        for index, model in enumerate(models):

            def figure(name: str, index: int = index) -> float | None:
                """The window's one datapoint of the figure (None when CloudWatch has none)."""
                points = values.get(f"{name}_{index}", [])
                return points[0][1] if points else None

            requests = figure("requests") or 0.0
            errors = figure("errors") or 0.0
            loaded_points = values.get(f"loaded_{index}", [])
            figures.append(
                ModelFigures(
                    model=model,
                    requests=round(requests),
                    requests_per_second=requests / seconds,
                    p50_ms=figure("p50"),
                    p99_ms=figure("p99"),
                    errors=round(errors),
                    errors_4xx=round(figure("errors_4xx") or 0.0),
                    errors_5xx=round(figure("errors_5xx") or 0.0),
                    error_rate=figure("error_rate"),
                    loaded=any(timestamp >= recent and value >= 1 for timestamp, value in loaded_points),
                )
            )
        self._last = FiguresFrame(
            source=self.description,
            taken_at=end,
            span_seconds=seconds,
            models=tuple(figures),
        )
        return self._last

    def _queries(self, models: list[str], start: datetime, end: datetime) -> list[dict[str, Any]]:
        """Every model's queries, with ids ``<figure>_<index of the model in models>``."""
        window_seconds = int((end - start).total_seconds())
        queries = []
        for index, model in enumerate(models):
            dimensions = [
                {"Name": ENDPOINT_DIMENSION, "Value": self.endpoint_name},
                {"Name": MODEL_DIMENSION, "Value": model},
            ]
            for name, query in _QUERIES.items():
                metric = {"Namespace": self.namespace, "MetricName": query.metric, "Dimensions": dimensions}
                queries.append(
                    {
                        "Id": f"{name}_{index}",
                        "MetricStat": {
                            "Metric": metric,
                            "Period": window_seconds if query.whole_window else self.period_seconds,
                            "Stat": query.stat,
                        },
                    }
                )
        return queries

    def _values(
        self, queries: list[dict[str, Any]], start: datetime, end: datetime
    ) -> dict[str, list[tuple[datetime, float]]]:
        """GetMetricData's datapoints by query id, `MAX_QUERIES` queries a call, every page."""
        values: dict[str, list[tuple[datetime, float]]] = {}
        for first in range(0, len(queries), MAX_QUERIES):
            request: dict[str, Any] = {
                "MetricDataQueries": queries[first : first + MAX_QUERIES],
                "StartTime": start,
                "EndTime": end,
            }
            while True:
                answer = self._cloudwatch.get_metric_data(**request)
                for result in answer.get("MetricDataResults", []):
                    points = zip(result.get("Timestamps", []), result.get("Values", []), strict=False)
                    values.setdefault(result["Id"], []).extend(
                        (timestamp.astimezone(UTC), float(value)) for timestamp, value in points
                    )
                token = answer.get("NextToken")
                if not token:
                    break
                request["NextToken"] = token
        return values
