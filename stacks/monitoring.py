"""Alarms and a dashboard on the multi-model endpoint's metrics, with an optional encrypted SNS topic."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from stacks.model_monitoring import ModelMonitoring
from stacks.multi_model_endpoint import ENDPOINT_METRICS_NAMESPACE, MultiModelEndpoint
from stacks.settings import StageSettings

PERIOD = Duration.minutes(5)
MICROSECONDS_PER_SECOND = 1_000_000
MICROSECONDS_PER_MILLISECOND = 1_000


class EndpointMonitoring(Construct):
    """CloudWatch alarms + dashboard for one MME variant.

    Props:
        endpoint: the `MultiModelEndpoint` to watch.
        settings: alarm thresholds and `alarm_email` ("" = alarms without notification target).

    Alarms (all over 5 minutes) on what signals trouble for a multi-model endpoint: Invocation5XXErrors sum,
    ModelLoadingWaitTime p99 (requests waiting for a model), ModelUnloadingTime sample count (evictions),
    ModelCacheHit average, ModelLatency p99 and OverheadLatency p99. Never on memory: an MME keeps models cached
    until memory runs out, so high memory use is its steady state (SageMaker's multi-model caching guide); the
    dashboard still graphs it. With `model_metrics`, also the container's per-model widgets and the worst model's
    error-rate alarm (`ModelMonitoring`, exposed as `models`, else None; its alarm is `alarms["ModelErrorRate"]`).
    Exposes `alarms` by metric name and `topic` (None without `alarm_email`).
    """

    def __init__(
        self, scope: Construct, construct_id: str, *, endpoint: MultiModelEndpoint, settings: StageSettings
    ) -> None:
        super().__init__(scope, construct_id)
        m = endpoint.variant_metric
        self.metrics: dict[str, cloudwatch.Metric] = {
            "Invocation5XXErrors": m("Invocation5XXErrors", statistic="Sum"),
            "ModelLoadingWaitTime": m("ModelLoadingWaitTime", statistic="p99"),
            "ModelUnloadingTime": m("ModelUnloadingTime", statistic="SampleCount"),
            "ModelCacheHit": m("ModelCacheHit", statistic="Average"),
            "ModelLatency": m("ModelLatency", statistic="p99"),
            "OverheadLatency": m("OverheadLatency", statistic="p99"),
        }
        metrics = {name: metric.with_(period=PERIOD) for name, metric in self.metrics.items()}
        gt = cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD
        # Missing data means no traffic, which is not a failure for any of these.
        not_breaching = cloudwatch.TreatMissingData.NOT_BREACHING
        specs: list[tuple[str, float, cloudwatch.ComparisonOperator, str]] = [
            ("Invocation5XXErrors", settings.alarm_5xx_errors, gt, "Model container answered 5xx"),
            (
                "ModelLoadingWaitTime",
                settings.alarm_model_loading_wait_seconds * MICROSECONDS_PER_SECOND,
                gt,
                "Requests wait long for a model to download and load (p99, microseconds)",
            ),
            ("ModelUnloadingTime", settings.alarm_model_unloads, gt, "Models are evicted often: the cache thrashes"),
            (
                "ModelCacheHit",
                settings.alarm_cache_hit_percent / 100,
                cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
                "Too few requests find their model already loaded",
            ),
            (
                "ModelLatency",
                settings.alarm_model_latency_ms * MICROSECONDS_PER_MILLISECOND,
                gt,
                "Predictions are slow inside the container (p99, microseconds)",
            ),
            (
                "OverheadLatency",
                settings.alarm_overhead_latency_ms * MICROSECONDS_PER_MILLISECOND,
                gt,
                "SageMaker overhead latency is high (p99, microseconds)",
            ),
        ]
        self.alarms: dict[str, cloudwatch.Alarm] = {}
        thresholds = {name: threshold for name, threshold, _, _ in specs}
        for name, threshold, operator, description in specs:
            self.alarms[name] = cloudwatch.Alarm(
                self,
                f"{name}Alarm",
                metric=metrics[name],
                threshold=threshold,
                comparison_operator=operator,
                evaluation_periods=3,
                datapoints_to_alarm=2,
                treat_missing_data=not_breaching,
                alarm_description=f"{description} on {endpoint.endpoint_name}",
            )
        self.models: ModelMonitoring | None = None
        if settings.model_metrics:
            self.models = ModelMonitoring(self, "Models", endpoint_name=endpoint.endpoint_name, settings=settings)
            self.alarms["ModelErrorRate"] = self.models.alarm

        self.topic: sns.Topic | None = None
        if settings.alarm_email:
            self.topic = self._topic(settings.alarm_email)
            action = cw_actions.SnsAction(self.topic)
            for alarm in self.alarms.values():
                alarm.add_alarm_action(action)
                alarm.add_ok_action(action)

        self.dashboard = cloudwatch.Dashboard(self, "Dashboard")
        self.dashboard.add_widgets(
            cloudwatch.AlarmStatusWidget(alarms=list(self.alarms.values()), title="Alarms", width=24),
        )
        self.dashboard.add_widgets(
            *[
                cloudwatch.GraphWidget(
                    title=name,
                    left=[metrics[name]],
                    left_annotations=[cloudwatch.HorizontalAnnotation(value=thresholds[name], label="alarm")],
                    width=8,
                )
                for name in metrics
            ],
            cloudwatch.GraphWidget(
                title="Invocations",
                left=[endpoint.variant_metric("Invocations", statistic="Sum").with_(period=PERIOD)],
                width=8,
            ),
            cloudwatch.GraphWidget(
                title="MemoryUtilization (high is normal: models stay cached)",
                left=[
                    endpoint.variant_metric("MemoryUtilization", namespace=ENDPOINT_METRICS_NAMESPACE).with_(
                        period=PERIOD
                    )
                ],
                width=8,
            ),
        )
        for row in self.models.widget_rows if self.models else []:
            self.dashboard.add_widgets(*row)

    def _topic(self, email: str) -> sns.Topic:
        # CloudWatch can publish to an encrypted topic only with a customer-managed key that trusts it.
        key = kms.Key(
            self,
            "TopicKey",
            enable_key_rotation=True,
            description="Encrypts the endpoint alarm topic",
            # Nothing in the stateless stack outlives it; a retained key would bill every destroy/redeploy cycle.
            removal_policy=RemovalPolicy.DESTROY,
            pending_window=Duration.days(7),
        )
        key.add_to_resource_policy(
            iam.PolicyStatement(
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                resources=["*"],  # in a key policy "*" means this key
            )
        )
        topic = sns.Topic(self, "AlarmTopic", master_key=key, enforce_ssl=True)
        topic.add_subscription(subscriptions.EmailSubscription(email))
        return topic
