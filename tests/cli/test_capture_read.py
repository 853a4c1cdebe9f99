"""`mme capture read`: one model's captured requests in a window, as JSON Lines on stdout or in a .jsonl/.parquet
file, from a local folder, an S3 prefix or a deployed stage's bucket (moto's S3 and SSM); refusals in words."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pyarrow.parquet as pq
import pytest
from capture_objects import SENTIMENT, TOPIC, capture_object, capture_record, three_hours_of_two_models, write_local
from moto_store import BUCKET, REGION
from typer.testing import CliRunner

from handler.telemetry.names import RECORD_FIELDS
from mme.cli import app

runner = CliRunner()
SEVEN_TO_EIGHT = ["--since", "2026-11-26T07:00:00Z", "--until", "2026-11-26T08:00:00Z"]
IN_SEVEN_TO_EIGHT = ("s4", "s5", "s6", "s7", "s8")


@pytest.fixture
def scenario() -> tuple[list[tuple[str, bytes]], dict[str, dict[str, Any]]]:
    return three_hours_of_two_models()


@pytest.fixture
def folder(tmp_path: Path, scenario: tuple[list[tuple[str, bytes]], dict[str, dict[str, Any]]]) -> Path:
    root = tmp_path / "capture"
    for name, data in scenario[0]:
        write_local(root, name, data)
    return root


def _lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_prints_the_window_as_json_lines_in_time_order(
    folder: Path, scenario: tuple[list[tuple[str, bytes]], dict[str, dict[str, Any]]]
) -> None:
    result = runner.invoke(app, ["capture", "read", "--source", str(folder), "--model", SENTIMENT, *SEVEN_TO_EIGHT])

    assert result.exit_code == 0, result.output
    records = scenario[1]
    assert _lines(result.stdout) == [records[name] for name in IN_SEVEN_TO_EIGHT]
    assert [list(record) for record in _lines(result.stdout)] == [list(RECORD_FIELDS)] * len(IN_SEVEN_TO_EIGHT)
    assert result.stderr == ""


def test_since_counts_back_from_now(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    recent, old = capture_record(TOPIC, now - timedelta(minutes=20)), capture_record(TOPIC, now - timedelta(hours=3))
    for record in (recent, old):
        write_local(tmp_path, *capture_object([record]))

    result = runner.invoke(app, ["capture", "read", "--source", str(tmp_path), "--model", TOPIC, "--since", "1h"])

    assert result.exit_code == 0, result.output
    assert _lines(result.stdout) == [recent]


def test_exports_json_lines_and_parquet_files(
    folder: Path, tmp_path: Path, scenario: tuple[list[tuple[str, bytes]], dict[str, dict[str, Any]]]
) -> None:
    expected = [scenario[1][name] for name in IN_SEVEN_TO_EIGHT]
    read = ["capture", "read", "--source", str(folder), "--model", SENTIMENT, *SEVEN_TO_EIGHT]

    jsonl = runner.invoke(app, [*read, "--output", str(tmp_path / "out.jsonl")])
    parquet = runner.invoke(app, [*read, "-o", str(tmp_path / "out.parquet")])

    assert jsonl.exit_code == 0, jsonl.output
    assert jsonl.stdout == ""
    assert "wrote 5 record(s) of sentiment.tar.gz (2026-11-26T07:00:00Z .. 2026-11-26T08:00:00Z)" in jsonl.stderr
    assert _lines((tmp_path / "out.jsonl").read_text()) == expected
    assert parquet.exit_code == 0, parquet.output
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [row["request_id"] for row in rows] == [record["request_id"] for record in expected]
    assert rows[0]["time"] == datetime(2026, 11, 26, 7, 0, 20, tzinfo=UTC)
    assert rows[1]["status"] == 400
    assert rows[1]["model_latency_ms"] is None
    assert rows[2]["truncated"] is True


def test_reads_an_s3_prefix(s3: Any, scenario: tuple[list[tuple[str, bytes]], dict[str, dict[str, Any]]]) -> None:
    for name, data in scenario[0]:
        s3.put_object(Bucket=BUCKET, Key=f"somewhere/capture/{name}", Body=data)

    result = runner.invoke(
        app, ["capture", "read", "--source", f"s3://{BUCKET}/somewhere/capture", "--model", TOPIC, *SEVEN_TO_EIGHT]
    )

    assert result.exit_code == 0, result.output
    assert _lines(result.stdout) == [scenario[1]["t1"]]


def _deploy_store(**parameters: str) -> None:
    """The SSM parameters of stage dev of owner alice's model store: bucket, model prefix and `parameters`."""
    ssm = boto3.client("ssm", region_name=REGION)
    for name, value in {"bucket": BUCKET, "model-prefix": "models/", **parameters}.items():
        ssm.put_parameter(Name=f"/mme/alice/dev/{name}", Value=value, Type="String")


STAGE_READ = ["capture", "read", "--stage", "dev", "--owner", "alice", "--model", SENTIMENT, *SEVEN_TO_EIGHT]


def test_a_stage_is_read_under_the_capture_prefix_it_publishes(
    s3: Any, scenario: tuple[list[tuple[str, bytes]], dict[str, dict[str, Any]]]
) -> None:
    _deploy_store(**{"capture-prefix": "team-a/requests/"})
    for name, data in scenario[0]:
        s3.put_object(Bucket=BUCKET, Key=f"team-a/requests/{name}", Body=data)
        s3.put_object(Bucket=BUCKET, Key=f"elsewhere/{name}", Body=data)

    published = runner.invoke(app, STAGE_READ)
    moved = runner.invoke(app, [*STAGE_READ, "--prefix", "elsewhere/"])
    default = runner.invoke(app, [*STAGE_READ, "--prefix", "capture/"])

    expected = [scenario[1][name] for name in IN_SEVEN_TO_EIGHT]
    assert published.exit_code == 0, published.output
    assert _lines(published.stdout) == expected
    assert moved.exit_code == 0, moved.output
    assert _lines(moved.stdout) == expected
    # Nothing under the default prefix: the published one was read, not the default.
    assert default.exit_code == 2
    assert f"no capture of model '{SENTIMENT}' under s3://{BUCKET}/capture/" in default.stderr


def test_a_stage_whose_store_publishes_no_capture_prefix_is_read_under_the_default(
    s3: Any, scenario: tuple[list[tuple[str, bytes]], dict[str, dict[str, Any]]]
) -> None:
    _deploy_store()  # a store stack last deployed before the capture-prefix parameter existed
    for name, data in scenario[0]:
        s3.put_object(Bucket=BUCKET, Key=f"capture/{name}", Body=data)

    result = runner.invoke(app, STAGE_READ)

    assert result.exit_code == 0, result.output
    assert _lines(result.stdout) == [scenario[1][name] for name in IN_SEVEN_TO_EIGHT]


def test_a_captured_model_with_nothing_in_the_window_says_so_on_stderr(folder: Path) -> None:
    result = runner.invoke(
        app, ["capture", "read", "--source", str(folder), "--model", TOPIC, "--since", "2026-11-26T08:00:00Z"]
    )

    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert f"no records of {TOPIC} in 2026-11-26T08:00:00Z .. " in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "sentimnet.tar.gz"], "no capture of model 'sentimnet.tar.gz' under "),
        (["--model", SENTIMENT, "--since", "yesterday"], "--since: 'yesterday' is not a time: give a duration ago"),
        (["--model", SENTIMENT, "--until", "soon"], "--until: 'soon' is not a time"),
        (["--model", SENTIMENT, "--since", "1h", "--until", "2h"], "the window is empty: since "),
        (["--model", SENTIMENT, "--output", "records.csv"], "records.csv: unknown suffix '.csv'; write .jsonl"),
        (
            ["--model", SENTIMENT, "--output", "no/such/folder/r.jsonl"],
            "cannot write no/such/folder/r.jsonl: the folder no/such/folder does not exist",
        ),
        (["--model", SENTIMENT, "--prefix", "capture/"], "--prefix goes with --stage"),
        (["--model", SENTIMENT, "--stage", "dev"], "give either --stage"),
    ],
)
def test_bad_input_is_named_with_exit_status_2(folder: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["capture", "read", "--source", str(folder), *args])

    assert result.exit_code == 2, result.output
    assert f"error: {message}" in result.stderr
    assert "Traceback" not in result.output


def test_a_stage_that_is_not_deployed_or_has_no_bucket_is_named(s3: Any) -> None:
    missing = runner.invoke(app, ["capture", "read", "--stage", "prod", "--model", SENTIMENT])
    no_bucket = runner.invoke(app, ["capture", "read", "--source", "s3://no-such-bucket/capture/", "--model", TOPIC])

    assert missing.exit_code == 2
    assert "stage 'prod' is not deployed in us-east-1" in missing.stderr
    assert no_bucket.exit_code == 2
    assert "bucket no-such-bucket does not exist" in no_bucket.stderr
