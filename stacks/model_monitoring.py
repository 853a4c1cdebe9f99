"""Per-model dashboard widgets and the worst model's error-rate alarm, on the serving container's own metrics.

The container writes one Embedded Metric Format line per model and minute (namespace `METRICS_NAMESPACE`, dimensions
EndpointName and ModelName; names in handler/telemetry/names.py). Models come and go at run time, so nothing here
names a model: every widget and the alarm is a CloudWatch Metrics Insights query over the endpoint's models, grouped by
ModelName and ranked, so a model nobody knew at synth shows up once it is called.
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from constructs import Construct

from handler.telemetry.names import (
    BATCH_SIZE,
    ENDPOINT_DIMENSION,
    ERRORS,
    ERRORS_4XX,
    ERRORS_5XX,
    INVOCATIONS,
    LOAD_TIME,
    LOADED,
    METRICS_NAMESPACE,
    MODEL_DIMENSION,
    MODEL_LATENCY,
    TOTAL_LATENCY,
)
from stacks.multi_model_endpoint import ENDPOINT_NAME_PATTERN
from stacks.settings import METRICS_INTERVAL_SECONDS, StageSettings

PERIOD = Duration.minutes(5)
#: Models per widget: the ones with the highest value of what the widget shows.
TOP_MODELS = 10
#: Metrics Insights aggregations (`SELECT <function>(metric)`).
AVG, MAX, SUM, COUNT = "AVG", "MAX", "SUM", "COUNT"


def model_query(metric: str, *, endpoint_name: str, function: str, top: int | None = TOP_MODELS) -> str:
    """A Metrics Insights query of the per-model `metric` of the endpoint `endpoint_name` (a literal name).

    `top` = N: `function` of each model, the N highest first, one series per model (`LIMIT 1` is the single worst
    model, one series, which an alarm can watch). `top` = None: `function` over all the endpoint's models, one series.
    Raises ValueError for a name that is no SageMaker endpoint name (it is quoted into the query).
    """
    if not ENDPOINT_NAME_PATTERN.match(endpoint_name):
        raise ValueError(f"endpoint name {endpoint_name!r}: allowed: a SageMaker endpoint name (letters, digits, '-')")
    query = (
        # Only our own names and a checked endpoint name go in; nothing comes from a request.
        f'SELECT {function}({metric}) FROM SCHEMA("{METRICS_NAMESPACE}", {ENDPOINT_DIMENSION}, {MODEL_DIMENSION}) '  # noqa: S608
        f"WHERE {ENDPOINT_DIMENSION} = '{endpoint_name}'"
    )
    if top is not None:
        query += f" GROUP BY {MODEL_DIMENSION} ORDER BY {function}() DESC LIMIT {top}"
    return query


class ModelMonitoring(Construct):
    """Widgets per model and one alarm on the worst model's error rate, for one endpoint's per-model metrics.

    Props:
        endpoint_name: the endpoint's physical name, the value of the metrics' EndpointName dimension (the container
            gets it as MME_METRICS_ENDPOINT). A literal: the queries name it.
        settings: `alarm_model_error_rate_percent`, the alarm's threshold.

    Exposes `alarm` (no action: the owner adds its notification target, like its own alarms) and `widget_rows`
    (rows of dashboard widgets, each row 24 wide, for the owner's dashboard). Build it only when the stage has
    `model_metrics`; without them the queries would find nothing.
    """

    def __init__(self, scope: Construct, construct_id: str, *, endpoint_name: str, settings: StageSettings) -> None:
        super().__init__(scope, construct_id)
        self.endpoint_name = endpoint_name
        threshold = settings.alarm_model_error_rate_percent / 100
        # Errors is 1 per failed request and 0 per answered one, so its average is the error rate (0-1), which
        # Metrics Insights can rank models by; the threshold is the percentage as that fraction. Evaluated like the
        # endpoint's own alarms (2 of 3 five-minute periods), so one bad request to a quiet model does not page.
        self.alarm = cloudwatch.Alarm(
            self,
            "ErrorRateAlarm",
            metric=self.query(ERRORS, function=AVG, top=1, label=None),
            threshold=threshold,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=3,
            datapoints_to_alarm=2,
            # No requests, no error rate: a quiet endpoint is not a failing one.
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            alarm_description=(
                f"One model's requests fail often on {endpoint_name}: the worst model's error rate (failed requests, "
                f"4xx or 5xx) is above {settings.alarm_model_error_rate_percent}% in 2 of 3 five-minute periods"
            ),
        )

        def graph(title: str, metric: str, function: str, width: int, **options: object) -> cloudwatch.GraphWidget:
            return cloudwatch.GraphWidget(
                title=title, left=[self.query(metric, function=function)], width=width, **options
            )

        self.widget_rows: list[list[cloudwatch.IWidget]] = [
            [
                cloudwatch.TextWidget(
                    markdown=f"### Models\nThe {TOP_MODELS} models with the highest value of each figure, from the "
                    f"container's per-model metrics ({METRICS_NAMESPACE}).",
                    width=24,
                    height=2,
                ),
            ],
            [
                graph(f"Requests per model (top {TOP_MODELS})", INVOCATIONS, SUM, 8),
                graph(
                    f"Error rate per model, 0-1 (top {TOP_MODELS})",
                    ERRORS,
                    AVG,
                    8,
                    left_annotations=[cloudwatch.HorizontalAnnotation(value=threshold, label="alarm")],
                ),
                cloudwatch.GraphWidget(
                    title="Models loaded (summed over instances)",
                    # One Loaded line per loaded model per metrics interval: summed over one interval, it counts them.
                    left=[
                        self.query(LOADED, function=SUM, top=None).with_(
                            period=Duration.seconds(METRICS_INTERVAL_SECONDS)
                        )
                    ],
                    width=8,
                ),
            ],
            [
                graph(f"4xx errors per model (top {TOP_MODELS})", ERRORS_4XX, SUM, 8),
                graph(f"5xx errors per model (top {TOP_MODELS})", ERRORS_5XX, SUM, 8),
                graph(f"Texts per model call, average (top {TOP_MODELS})", BATCH_SIZE, AVG, 8),
            ],
            [
                graph(f"Model latency per model, average ms (top {TOP_MODELS})", MODEL_LATENCY, AVG, 6),
                graph(f"Model latency per model, max ms (top {TOP_MODELS})", MODEL_LATENCY, MAX, 6),
                graph(f"Total latency per model, average ms (top {TOP_MODELS})", TOTAL_LATENCY, AVG, 6),
                graph(f"Total latency per model, max ms (top {TOP_MODELS})", TOTAL_LATENCY, MAX, 6),
            ],
            [
                graph(f"Load time per model, average ms (top {TOP_MODELS})", LOAD_TIME, AVG, 12),
                graph(f"Loads per model (top {TOP_MODELS})", LOAD_TIME, COUNT, 12),
            ],
        ]

    def query(
        self, metric: str, *, function: str, top: int | None = TOP_MODELS, label: str | None = ""
    ) -> cloudwatch.MathExpression:
        """`model_query` of this endpoint as a 5-minute expression for a graph or an alarm.

        `label` "" (for graphs) labels each series with its model; CDK's own default label, the whole query, would
        give every model the same one. None sets no label (for an alarm, whose single query needs none).
        """
        return cloudwatch.MathExpression(
            expression=model_query(metric, endpoint_name=self.endpoint_name, function=function, top=top),
            # A query reads its metrics itself; there are none to pass.
            using_metrics={},
            label=label,
            period=PERIOD,
        )
