"""Per-model monitoring: Metrics Insights widgets on the dashboard and the worst model's error-rate alarm."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk import App, Stack
from aws_cdk.assertions import Template
from cdk_synth import synth_app

from handler.telemetry.names import METRIC_UNITS
from mme.aws.cost import ENDPOINT_ALARMS, METRICS_PER_MODEL, MODEL_METRICS_ALARMS
from stacks.model_monitoring import ModelMonitoring, model_query
from stacks.settings import StageSettings

SCHEMA = "FROM SCHEMA(\"MultiModelEndpoint/Models\", EndpointName, ModelName) WHERE EndpointName = 'Mme-dev-Endpoint'"
#: What the dashboard of the dev stage ranks models by: its per-model queries, verbatim.
DASHBOARD_QUERIES = {
    f"SELECT SUM(Invocations) {SCHEMA} GROUP BY ModelName ORDER BY SUM() DESC LIMIT 10",
    f"SELECT AVG(Errors) {SCHEMA} GROUP BY ModelName ORDER BY AVG() DESC LIMIT 10",
    f"SELECT SUM(Errors4xx) {SCHEMA} GROUP BY ModelName ORDER BY SUM() DESC LIMIT 10",
    f"SELECT SUM(Errors5xx) {SCHEMA} GROUP BY ModelName ORDER BY SUM() DESC LIMIT 10",
    f"SELECT AVG(ModelLatency) {SCHEMA} GROUP BY ModelName ORDER BY AVG() DESC LIMIT 10",
    f"SELECT MAX(ModelLatency) {SCHEMA} GROUP BY ModelName ORDER BY MAX() DESC LIMIT 10",
    f"SELECT AVG(TotalLatency) {SCHEMA} GROUP BY ModelName ORDER BY AVG() DESC LIMIT 10",
    f"SELECT MAX(TotalLatency) {SCHEMA} GROUP BY ModelName ORDER BY MAX() DESC LIMIT 10",
    f"SELECT AVG(LoadTime) {SCHEMA} GROUP BY ModelName ORDER BY AVG() DESC LIMIT 10",
    f"SELECT COUNT(LoadTime) {SCHEMA} GROUP BY ModelName ORDER BY COUNT() DESC LIMIT 10",
    f"SELECT AVG(BatchSize) {SCHEMA} GROUP BY ModelName ORDER BY AVG() DESC LIMIT 10",
    f"SELECT SUM(Loaded) {SCHEMA}",
}
WORST_MODEL_ERROR_RATE = f"SELECT AVG(Errors) {SCHEMA} GROUP BY ModelName ORDER BY AVG() DESC LIMIT 1"


def _part(part: str | dict[str, Any]) -> str:
    if isinstance(part, str):
        return part
    if "Fn::GetAtt" in part:
        return "<{}.{}>".format(*part["Fn::GetAtt"])
    return f"<{part['Ref']}>"


def _dashboard_widgets(template: Template) -> list[dict[str, Any]]:
    """The widgets of the stack's one dashboard (in its body's `Fn::Join`, `<AWS::Region>`, `<AlarmId.Arn>`)."""
    (dashboard,) = template.find_resources("AWS::CloudWatch::Dashboard").values()
    parts = dashboard["Properties"]["DashboardBody"]["Fn::Join"][1]
    return list(json.loads("".join(_part(part) for part in parts))["widgets"])


def _expressions(template: Template) -> dict[str, dict[str, Any]]:
    """Every expression graphed on the dashboard, with its options."""
    return {
        entry["expression"]: entry
        for widget in _dashboard_widgets(template)
        for line in widget["properties"].get("metrics", [])
        for entry in line
        if isinstance(entry, dict) and "expression" in entry
    }


def _query_alarms(template: Template) -> dict[str, dict[str, Any]]:
    """Alarms on an expression (not on one metric), by logical ID."""
    alarms = template.find_resources("AWS::CloudWatch::Alarm")
    return {logical_id: alarm for logical_id, alarm in alarms.items() if "Metrics" in alarm["Properties"]}


def _environment(template: Template) -> dict[str, Any]:
    (model,) = template.find_resources("AWS::SageMaker::Model").values()
    return dict(model["Properties"]["PrimaryContainer"]["Environment"])


def test_the_dashboard_ranks_models_with_metrics_insights_queries_naming_the_endpoint(dev_endpoint: Template) -> None:
    expressions = _expressions(dev_endpoint)
    assert set(expressions) >= DASHBOARD_QUERIES
    assert {e for e in expressions if "MultiModelEndpoint/Models" in e} == DASHBOARD_QUERIES
    for query in DASHBOARD_QUERIES - {f"SELECT SUM(Loaded) {SCHEMA}"}:
        # No label: each series is labelled with its model, not all with the query.
        assert "label" not in expressions[query], expressions[query]
    # One Loaded per loaded model per minute (MME_METRICS_INTERVAL_SECONDS): summed over a minute, it counts them.
    assert expressions[f"SELECT SUM(Loaded) {SCHEMA}"]["period"] == 60


def test_the_error_rate_graph_marks_the_alarm_threshold_as_a_fraction(dev_endpoint: Template) -> None:
    (widget,) = [
        w
        for w in _dashboard_widgets(dev_endpoint)
        if any(
            isinstance(entry, dict) and entry.get("expression", "").startswith("SELECT AVG(Errors)")
            for line in w["properties"].get("metrics", [])
            for entry in line
        )
    ]
    assert widget["properties"]["annotations"]["horizontal"] == [{"value": 0.05, "label": "alarm", "yAxis": "left"}]


def test_the_worst_model_error_rate_alarms_on_one_metrics_insights_series(dev_endpoint: Template) -> None:
    ((logical_id, alarm),) = _query_alarms(dev_endpoint).items()
    properties = alarm["Properties"]
    assert properties["Metrics"] == [
        {"Expression": WORST_MODEL_ERROR_RATE, "Id": "expr_1", "Period": 300, "ReturnData": True}
    ]
    assert "MetricName" not in properties
    # Errors' average is the error rate as a fraction: 5 % is 0.05.
    assert properties["Threshold"] == 0.05
    assert properties["ComparisonOperator"] == "GreaterThanThreshold"
    assert properties["TreatMissingData"] == "notBreaching"
    assert "Mme-dev-Endpoint" in properties["AlarmDescription"]
    # Like every alarm, it exists only while the endpoint is awake, and shows on the dashboard's alarm widget.
    conditions = {a.get("Condition") for a in dev_endpoint.find_resources("AWS::CloudWatch::Alarm").values()}
    assert len(conditions) == 1
    assert alarm.get("Condition") in conditions
    (status,) = [w for w in _dashboard_widgets(dev_endpoint) if w["properties"].get("title") == "Alarms"]
    assert f"<{logical_id}.Arn>" in status["properties"]["alarms"]


def test_mme_cost_counts_the_alarms_and_metrics_a_stage_with_model_metrics_has(dev_endpoint: Template) -> None:
    alarms = dev_endpoint.find_resources("AWS::CloudWatch::Alarm")
    assert len(alarms) == ENDPOINT_ALARMS + MODEL_METRICS_ALARMS == 7
    assert len(_query_alarms(dev_endpoint)) == MODEL_METRICS_ALARMS
    # Every metric the container can write for a model is priced, and the dashboard graphs each of them.
    assert METRICS_PER_MODEL == len(METRIC_UNITS) == 9
    assert {query.split("(")[1].split(")")[0] for query in DASHBOARD_QUERIES} == set(METRIC_UNITS)


def test_the_error_rate_alarm_notifies_the_alarm_topic_with_the_stage_threshold(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    synthesized = synth_app(
        tmp_path_factory.mktemp("email"),
        {"stages": {"dev": {"alarm_email": "ops@example.com", "alarm_model_error_rate_percent": 12}}},
    )
    template = synthesized.template(synthesized.stage("dev").endpoint)
    ((_, alarm),) = _query_alarms(template).items()
    (topic_id,) = template.find_resources("AWS::SNS::Topic")
    assert alarm["Properties"]["Threshold"] == 0.12
    assert alarm["Properties"]["AlarmActions"] == [{"Ref": topic_id}]
    assert alarm["Properties"]["OKActions"] == [{"Ref": topic_id}]
    # The same action as every other alarm.
    actions = [a["Properties"]["AlarmActions"] for a in template.find_resources("AWS::CloudWatch::Alarm").values()]
    assert all(a == [{"Ref": topic_id}] for a in actions)


def test_without_model_metrics_there_are_no_model_widgets_no_model_alarm_and_the_container_is_told(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    synthesized = synth_app(tmp_path_factory.mktemp("no-metrics"), {"stages": {"dev": {"model_metrics": False}}})
    template = synthesized.template(synthesized.stage("dev").endpoint)
    assert not [e for e in _expressions(template) if "MultiModelEndpoint/Models" in e]
    assert _query_alarms(template) == {}
    # The endpoint's own alarms stay: what `mme cost` bills a stage with model_metrics false.
    assert len(template.find_resources("AWS::CloudWatch::Alarm")) == ENDPOINT_ALARMS == 6
    assert _environment(template)["MME_METRICS_ENABLED"] == "false"
    assert synthesized.stage("dev").endpoint.monitoring.models is None


def test_model_monitoring_builds_alone_in_a_bare_stack() -> None:
    stack = Stack(App(), "Bare")
    monitoring = ModelMonitoring(
        stack,
        "Models",
        endpoint_name="my-endpoint",
        settings=StageSettings(name="dev", alarm_model_error_rate_percent=1),
    )
    template = Template.from_stack(stack)
    template.resource_count_is("AWS::CloudWatch::Alarm", 1)
    (alarm,) = template.find_resources("AWS::CloudWatch::Alarm").values()
    assert alarm["Properties"]["Threshold"] == 0.01
    assert "WHERE EndpointName = 'my-endpoint' GROUP BY" in alarm["Properties"]["Metrics"][0]["Expression"]
    assert "AlarmActions" not in alarm["Properties"]  # its owner adds the notification target
    for row in monitoring.widget_rows:
        assert sum(widget.width for widget in row) == 24


@pytest.mark.parametrize("name", ["it's", "a b", "", "x" * 64])
def test_a_query_refuses_a_name_that_is_no_endpoint_name(name: str) -> None:
    with pytest.raises(ValueError, match="endpoint name"):
        model_query("Errors", endpoint_name=name, function="AVG")
