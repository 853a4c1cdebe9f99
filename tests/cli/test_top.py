"""`mme top --once`: the busiest models' table from a local endpoint's Prometheus page (a real prometheus_client
registry served over HTTP, changing between the two scrapes) and from a stage's CloudWatch metrics in moto."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from moto import mock_aws
from published_metrics import BUSY_FIGURES, busy_endpoint, put_emf_values, teach_moto_percentiles
from typer.testing import CliRunner

from handler.telemetry import names
from mme.cli import app
from mme.telemetry.figures_table import COLUMNS

runner = CliRunner()
REGION = "eu-west-1"
ENDPOINT = "Mme-dev-Endpoint"


def _table(output: str) -> list[dict[str, str]]:
    """The table's rows as column -> cell."""
    rows = [[cell.strip() for cell in line.strip("│").split("│")] for line in output.splitlines() if line[:1] == "│"]
    return [dict(zip(COLUMNS, row, strict=True)) for row in rows]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def test_once_shows_the_busiest_models_between_two_scrapes() -> None:
    endpoint = busy_endpoint()
    with endpoint.served() as url:
        result = runner.invoke(app, ["top", "--endpoint-url", url, "--once", "--interval", "0.1", "--limit", "3"])

    assert result.exit_code == 0, result.output
    assert endpoint.scrapes == 2
    assert re.search(rf"{re.escape(url)}/metrics: requests over \d+\.\d s, to \d\d:\d\d:\d\d UTC", result.stdout)
    assert "3 of 4 model(s), by requests per second" in result.stdout
    rows = _table(result.stdout)
    assert [row["MODEL"] for row in rows] == ["a.tar.gz", "b.tar.gz", "other"]
    for row in rows:
        requests, p50, p99, errors, errors_4xx, errors_5xx, loaded = BUSY_FIGURES[row["MODEL"]]
        assert re.fullmatch(r"[0-9,]+\.\d\d", row["REQ/S"])
        assert row["REQUESTS"] == str(requests)
        assert (row["P50 MS"], row["P99 MS"]) == (_ms(p50), _ms(p99))
        assert (row["ERRORS"], row["4XX"], row["5XX"]) == (str(errors), str(errors_4xx), str(errors_5xx))
        assert row["ERR %"] == f"{100 * errors / requests:.1f}"
        assert row["LOADED"] == {True: "yes", False: "no", None: "?"}[loaded]


def test_without_once_the_view_refreshes_until_ctrl_c(monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []

    def pause_then_interrupt(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 2:  # after the first frame is shown
            raise KeyboardInterrupt

    monkeypatch.setattr("mme.telemetry.model_figures.time.sleep", pause_then_interrupt)
    with busy_endpoint().served() as url:
        result = runner.invoke(app, ["top", "--endpoint-url", url, "--interval", "7"])

    assert result.exit_code == 0, result.output
    assert pauses == [7.0, 7.0]
    assert [row["MODEL"] for row in _table(result.stdout)] == ["a.tar.gz", "b.tar.gz", "other", "c.tar.gz"]


def test_nothing_answering_at_the_endpoint_url_is_named() -> None:
    result = runner.invoke(app, ["top", "--endpoint-url", "http://127.0.0.1:9", "--once"])

    assert result.exit_code == 2
    assert "error: no endpoint answers at http://127.0.0.1:9/metrics" in result.stderr
    assert "Traceback" not in result.output


@pytest.fixture
def stage(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Stage dev's parameters in moto (its endpoint's name among them), and its CloudWatch client."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "MME_OWNER"):
        monkeypatch.delenv(name, raising=False)
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    teach_moto_percentiles(monkeypatch)
    with mock_aws():
        ssm = boto3.client("ssm", region_name=REGION)
        for name, value in (("bucket", "models-bucket"), ("model-prefix", "models/"), ("endpoint-name", ENDPOINT)):
            ssm.put_parameter(Name=f"/mme/dev/{name}", Value=value, Type="String")
        yield boto3.client("cloudwatch", region_name=REGION)


def test_once_on_a_stage_shows_its_models_from_cloudwatch(stage: Any) -> None:
    two_minutes_ago = datetime.now(UTC) - timedelta(minutes=2)  # inside the last five whole minutes, whenever now is
    published = {
        names.INVOCATIONS: [1.0] * 20,
        names.TOTAL_LATENCY: [float(ms) for ms in range(10, 210, 10)],
        names.ERRORS: [1.0] * 2 + [0.0] * 18,
        names.ERRORS_4XX: [1.0] + [0.0] * 19,
        names.ERRORS_5XX: [1.0] + [0.0] * 19,
        names.LOADED: [1.0],
    }
    for metric, values in published.items():
        put_emf_values(stage, endpoint=ENDPOINT, model="a.tar.gz", metric=metric, values=values, at=two_minutes_ago)
    put_emf_values(
        stage, endpoint=ENDPOINT, model="b.tar.gz", metric=names.INVOCATIONS, values=[1.0] * 3, at=two_minutes_ago
    )

    result = runner.invoke(app, ["top", "--stage", "dev", "--once"])

    assert result.exit_code == 0, result.output
    assert f"CloudWatch {names.METRICS_NAMESPACE}, endpoint {ENDPOINT}: requests over 5 min" in result.stdout
    a, b = _table(result.stdout)
    assert a == {
        "MODEL": "a.tar.gz",
        "REQ/S": f"{20 / 300:.2f}",
        "REQUESTS": "20",
        "P50 MS": "100.0",
        "P99 MS": "200.0",
        "ERRORS": "2",
        "ERR %": "10.0",
        "4XX": "1",
        "5XX": "1",
        "LOADED": "yes",
    }
    assert (b["MODEL"], b["REQUESTS"], b["P50 MS"], b["ERR %"], b["LOADED"]) == ("b.tar.gz", "3", "-", "-", "no")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stage", "dev", "--endpoint-url", "http://127.0.0.1:8080"], "give --stage (a stage's CloudWatch metrics)"),
        (["--stage", "qa"], "stage 'qa' is not deployed in eu-west-1"),
    ],
)
def test_a_stage_that_cannot_be_shown_is_named(stage: Any, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["top", *args, "--once"])

    assert result.exit_code == 2
    assert f"error: {message}" in result.stderr


def test_a_stage_without_an_endpoint_says_to_deploy_it(stage: Any) -> None:
    boto3.client("ssm", region_name=REGION).delete_parameter(Name="/mme/dev/endpoint-name")

    result = runner.invoke(app, ["top", "--stage", "dev", "--once"])

    assert result.exit_code == 2
    assert "error: stage 'dev' has no endpoint stack (Mme-dev-Endpoint): deploy it first" in result.stderr
