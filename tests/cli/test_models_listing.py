"""`mme models`: the archives under a stage's model prefix (moto's S3 and SSM), as TargetModel values with sizes and
dates, sorted; refusals in words. The local endpoint's listing is in tests/local/test_model_listing_route.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.core import set_initial_no_auth_action_count
from moto_store import BUCKET, REGION
from typer.testing import CliRunner

from mme.cli import app

runner = CliRunner()


@pytest.fixture
def stored(s3: Any, demo_archives: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Archives under models/ (one in a subfolder), plus objects that are not archives or not under the prefix;
    returns TargetModel -> HeadObject of each archive."""
    keys = {
        "topic.tar.gz": demo_archives["topic"],
        "sentiment.tar.gz": demo_archives["sentiment"],
        "team-a/sentiment-v3.tar.gz": demo_archives["sentiment"],
    }
    for target_model, archive in keys.items():
        s3.put_object(Bucket=BUCKET, Key=f"models/{target_model}", Body=archive.read_bytes())
    s3.put_object(Bucket=BUCKET, Key="models/", Body=b"")  # a console-made folder marker
    s3.put_object(Bucket=BUCKET, Key="models/README.txt", Body=b"not a model")
    s3.put_object(Bucket=BUCKET, Key="capture/sentiment.tar.gz", Body=b"outside the prefix")
    return {key: s3.head_object(Bucket=BUCKET, Key=f"models/{key}") for key in keys}


def _rows(output: str) -> list[list[str]]:
    """The table's rows after its header, split on runs of two or more spaces."""
    lines = output.splitlines()
    header = next(index for index, line in enumerate(lines) if line.startswith("TARGETMODEL"))
    return [re.split(r" {2,}", line.strip()) for line in lines[header + 1 :] if line.strip()]


def test_lists_targetmodels_sizes_and_dates_sorted(stored: dict[str, dict[str, Any]]) -> None:
    result = runner.invoke(app, ["models", "--bucket", BUCKET, "--prefix", "models"])

    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"s3://{BUCKET}/models/: 3 model archives\n")
    assert re.search(r"^TARGETMODEL\s+SIZE\s+LAST MODIFIED \(UTC\)$", result.output, re.MULTILINE)
    rows = _rows(result.output)
    assert [row[0] for row in rows] == ["sentiment.tar.gz", "team-a/sentiment-v3.tar.gz", "topic.tar.gz"]
    for target_model, size, date in rows:
        head = stored[target_model]
        assert re.fullmatch(r"\d+(\.\d)? kB", size)
        # Shown to 0.1 kB: at most half a step off (and a float's rounding of that half).
        assert float(size.split()[0]) == pytest.approx(head["ContentLength"] / 1000, abs=0.05 + 1e-9)
        assert date == f"{head['LastModified']:%Y-%m-%d %H:%M:%S}"


def test_stage_resolves_the_bucket_and_prefix_from_ssm(s3: Any, stored: dict[str, dict[str, Any]]) -> None:
    ssm = boto3.client("ssm", region_name=REGION)
    ssm.put_parameter(Name="/mme/alice/dev/bucket", Value=BUCKET, Type="String")
    ssm.put_parameter(Name="/mme/alice/dev/model-prefix", Value="models/team-a/", Type="String")

    result = runner.invoke(app, ["models", "--stage", "dev", "--owner", "alice"])

    assert result.exit_code == 0, result.output
    assert f"s3://{BUCKET}/models/team-a/: 1 model archive\n" in result.output
    assert [row[0] for row in _rows(result.output)] == ["sentiment-v3.tar.gz"]


def test_an_empty_prefix_says_so(s3: Any) -> None:
    result = runner.invoke(app, ["models", "--bucket", BUCKET, "--prefix", "models/"])

    assert result.exit_code == 0, result.output
    assert f"s3://{BUCKET}/models/: no model archives (*.tar.gz)" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bucket", "no-such-bucket", "--prefix", "models/"], "bucket no-such-bucket does not exist"),
        (["--stage", "prod"], "stage 'prod' is not deployed in us-east-1"),
        (["--stage", "dev", "--bucket", BUCKET, "--prefix", "m/"], "give either --stage"),
        (["--bucket", BUCKET], "give either --stage"),
        (["--endpoint-url", "http://127.0.0.1:9", "--stage", "dev"], "give --endpoint-url alone"),
        (["--endpoint-url", "http://127.0.0.1:9"], "no endpoint answers at http://127.0.0.1:9"),
        (["--bucket", BUCKET, "--prefix", "/models"], "must be a key prefix such as models/"),
    ],
)
def test_bad_input_is_named_with_exit_status_2(s3: Any, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["models", *args])

    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_access_denied_names_the_permission(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    @set_initial_no_auth_action_count(3)  # these three calls set up the user; every later one is authorized by IAM
    def list_as_a_user_who_may_not_list() -> Any:
        iam = boto3.client("iam", region_name=REGION)
        iam.create_user(UserName="runner")
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="runner", PolicyName="get-only", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="runner")["AccessKey"]
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        return runner.invoke(app, ["models", "--bucket", BUCKET, "--prefix", "models/"])

    result = list_as_a_user_who_may_not_list()

    assert result.exit_code == 2
    assert f"access denied: ListObjectsV2 on s3://{BUCKET}/models/" in result.output
    assert "needs s3:ListBucket" in result.output
