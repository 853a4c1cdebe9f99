"""`mme cost`: figures from a density file and price table written here, checked against this file's own arithmetic;
deployed stages read from moto (SSM, S3, SageMaker, CloudWatch)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from moto import mock_aws
from typer.testing import CliRunner

from mme.aws.cost import load_density, load_prices
from mme.cli import app

runner = CliRunner()
MIB = 1024 * 1024
GIB = 1024 * MIB
REGION = "us-east-1"

# The fixed inputs: 1 GiB fixed (the fit's intercept; the base is smaller), 250 MiB per model.
BASE_MIB, INTERCEPT_MIB, PER_MODEL_MIB = 512, 1024, 250
PRICES_TOML = """
region = "us-east-1"
currency = "USD"
source = "written by tests/cli/test_cost.py"
taken = "2026-01-01"

[other]
ebs_usd_per_gb_month = 0.10
kms_key_usd_month = 1.0
alarm_usd_month = 0.10
dashboard_usd_month = 3.0
s3_usd_per_gb_month = 0.02
custom_metric_usd_month = 0.30

[instance_types."ml.m5.large"]
usd_per_hour = 0.10
vcpu = 2
memory_gib = 8

[instance_types."ml.t2.medium"]
usd_per_hour = 0.05
vcpu = 2
memory_gib = 4

[instance_types."ml.t2.small"]
usd_per_hour = 0.03
vcpu = 1
memory_gib = 1.5
"""


def per_instance(memory_mib: int, *, reserve_mb: int = 512, workers: int = 1) -> int:
    return (memory_mib - INTERCEPT_MIB - reserve_mb) // (PER_MODEL_MIB * workers)


@pytest.fixture
def inputs(tmp_path: Path) -> list[str]:
    density = tmp_path / "density.json"
    density.write_text(
        json.dumps(
            {
                "when": "2026-11-20T10:00:00+00:00",
                "base_bytes": BASE_MIB * MIB,
                "intercept_bytes": INTERCEPT_MIB * MIB,
                "per_model_bytes": PER_MODEL_MIB * MIB,
                "workers_per_model": 1,
            }
        )
    )
    prices = tmp_path / "prices.toml"
    prices.write_text(PRICES_TOML)
    return ["--density", str(density), "--prices", str(prices)]


def cost(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["cost", *args])
    return result.exit_code, result.stdout, result.stderr


def markdown_rows(output: str) -> dict[int, list[str]]:
    """The Markdown table's rows by model count: [instances, MME USD, per-model endpoints, their USD, saving]."""
    rows = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].isdigit():
            rows[int(cells[0])] = cells[1:]
    return rows


def usd(value: float) -> str:
    return f"{value:,.2f}"


def test_cost_of_the_default_stage_against_one_endpoint_per_model(inputs: list[str]) -> None:
    status, out, err = cost(*inputs, "--format", "markdown")
    assert status == 0, err
    fits = per_instance(8 * 1024)
    assert fits == 26  # (8192 - 1024 - 512 MiB, the shared host's default headroom) // 250
    mme_instance = 0.10 * 730 + 30 * 0.10  # an always awake ml.m5.large and its 30 GB volume: 76.00
    # ml.t2.small (1.5 GiB) is cheaper but holds no model; ml.t2.medium holds (4096 - 1536) // 250 = 10.
    single = 0.05 * 730 + 30 * 0.10  # 39.50
    rows = markdown_rows(out)
    for models, instances in ((10, 1), (50, 2), (200, 8)):
        assert instances == math.ceil(models / fits) or instances == 1
        mme, alone = instances * mme_instance, models * single
        assert rows[models] == [
            f"{instances} x ml.m5.large",
            usd(mme),
            f"{models} x ml.t2.medium",
            usd(alone),
            f"{usd(alone - mme)} ({100 * (alone - mme) / alone:.0f}%)",
        ]
    assert rows[10][1] == "76.00"
    assert rows[200][3] == "7,900.00"
    assert "models per ml.m5.large: 26 = (8 GiB - 1024 MiB fixed - 512 MiB load reserve) // 250 MiB" in out
    assert "density: density.json, measured 2026-11-20T10:00:00+00:00" in out
    assert "hours awake per month: 730 (assumed: always awake)" in out
    # The stage's other costs: the store's key, and seven alarms (six of the endpoint's, one on the per-model
    # metrics, which are on by default) and a dashboard for the whole month.
    assert "USD 4.70/month (the store's KMS key 1.00, 7 alarms and 1 dashboard while awake 3.70)" in out
    # The per-model metrics apart, per model count: 9 metrics a model, USD 0.30 each for every hour of the month.
    (metrics,) = [line for line in out.splitlines() if line.startswith("Per-model metrics")]
    assert metrics == (
        "Per-model metrics, an upper bound (every model busy every hour awake), in no column: "
        "up to 10 models x 9 metrics USD 27.00/month, up to 50 models x 9 metrics USD 135.00/month, "
        "up to 200 models x 9 metrics USD 540.00/month; a stage's model_metrics: false removes them."
    )
    assert "per-model metrics: on (a stage's default, stacks/settings.py)" in out


def test_hours_awake_prorate_instances_volumes_and_monitoring(inputs: list[str]) -> None:
    status, out, err = cost(*inputs, "--models", "10", "--models", "30", "--hours-awake", "176", "--instances", "2")
    assert status == 0, err
    per_instance_month = 0.10 * 176 + 30 * 0.10 * 176 / 730
    table = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()[:2].isdigit()}
    assert table["10"][1:5] == ["2", "x", "ml.m5.large", usd(2 * per_instance_month)]  # at least the 2 configured
    assert table["30"][1:5] == ["2", "x", "ml.m5.large", usd(2 * per_instance_month)]  # 27 + 3: two instances
    assert "hours awake per month: 176 (option)" in out
    assert f"USD {usd(1 + 176 / 730 * (7 * 0.10 + 3))}/month" in out
    # A metric is billed for the hours it receives data: at most the hours the endpoint exists.
    assert f"up to 10 models x 9 metrics USD {usd(10 * 9 * 0.30 * 176 / 730)}/month" in out
    assert f"up to 30 models x 9 metrics USD {usd(30 * 9 * 0.30 * 176 / 730)}/month" in out
    assert "counted for every hour awake (176 h)" in out


def test_more_instances_than_the_models_need_are_all_paid(inputs: list[str]) -> None:
    status, out, _ = cost(*inputs, "--format", "markdown", "--models", "10", "--instances", "3")
    assert status == 0
    assert markdown_rows(out)[10][:2] == ["3 x ml.m5.large", usd(3 * 76.0)]


def test_unknown_instance_type_names_the_known_ones(inputs: list[str]) -> None:
    status, _, err = cost(*inputs, "--instance-type", "ml.p3.2xlarge")
    assert status == 2
    assert "no price for instance type 'ml.p3.2xlarge'" in err
    assert "knows ml.t2.small, ml.t2.medium, ml.m5.large" in err


def test_an_instance_type_too_small_for_one_model_is_refused(inputs: list[str]) -> None:
    status, _, err = cost(*inputs, "--instance-type", "ml.t2.small")
    assert status == 2
    assert "ml.t2.small (1.5 GiB) holds no model" in err


def test_missing_density_says_how_to_measure_it(inputs: list[str], tmp_path: Path) -> None:
    status, _, err = cost("--density", str(tmp_path / "nowhere.json"), *inputs[2:])
    assert status == 2
    assert f"no measured density at {tmp_path / 'nowhere.json'}" in err
    assert "make bench-density" in err


def test_the_shipped_price_table_and_density_are_readable() -> None:
    prices = load_prices()
    readme_types = ("ml.c5.large", "ml.m5.large", "ml.m5.xlarge", "ml.r5.large", "ml.r5.xlarge", "ml.m5.2xlarge")
    assert set(prices.instance_types) >= {*readme_types, "ml.t2.medium", "ml.c5.xlarge"}
    assert prices.instance("ml.m5.large").usd_per_hour == 0.115
    assert prices.instance("ml.m5.large").memory_gib == 8
    assert prices.region == "us-east-1"
    assert prices.custom_metric_usd_month == 0.30  # CloudWatch's first tier, per metric-month
    assert prices.taken
    density = load_density()
    assert 0 < density.base_bytes <= density.fixed_bytes < 4 * GIB
    assert 0 < density.per_model_bytes < 2 * GIB


# --- deployed stages, read from moto ---------------------------------------------------------------------------

ENDPOINT = "Mme-dev-Endpoint"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[boto3.session.Session]:
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        yield boto3.session.Session(region_name=REGION)


def deploy_store(session: boto3.session.Session) -> None:
    """The model store as its stack leaves it: a versioned bucket, its SSM parameters; 30 MB of model versions."""
    s3 = session.client("s3")
    s3.create_bucket(Bucket="dev-models")
    s3.put_bucket_versioning(Bucket="dev-models", VersioningConfiguration={"Status": "Enabled"})
    ten_mb = b"x" * 10_000_000
    for key in ("models/a.tar.gz", "models/a.tar.gz", "models/b.tar.gz", "capture/not-a-model.jsonl"):
        s3.put_object(Bucket="dev-models", Key=key, Body=ten_mb)
    ssm = session.client("ssm")
    ssm.put_parameter(Name="/mme/dev/bucket", Value="dev-models", Type="String")
    ssm.put_parameter(Name="/mme/dev/model-prefix", Value="models/", Type="String")


def deploy_endpoint(session: boto3.session.Session, environment: dict[str, str]) -> None:
    """The endpoint stack: a MultiModel model, 2 x ml.m5.large with 20 GB volumes, SSM /mme/dev/endpoint-name."""
    sagemaker = session.client("sagemaker")
    sagemaker.create_model(
        ModelName="dev-model",
        ExecutionRoleArn="arn:aws:iam::123456789012:role/execution",
        PrimaryContainer={
            "Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/mme:1",
            "Mode": "MultiModel",
            "ModelDataUrl": "s3://dev-models/models/",
            "Environment": environment,
        },
    )
    sagemaker.create_endpoint_config(
        EndpointConfigName="dev-config",
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": "dev-model",
                "InitialInstanceCount": 2,
                "InstanceType": "ml.m5.large",
                "VolumeSizeInGB": 20,
            }
        ],
    )
    sagemaker.create_endpoint(EndpointName=ENDPOINT, EndpointConfigName="dev-config")
    session.client("ssm").put_parameter(Name="/mme/dev/endpoint-name", Value=ENDPOINT, Type="String")


def test_a_deployed_stage_is_costed_as_it_runs(aws: boto3.session.Session, inputs: list[str]) -> None:
    deploy_store(aws)
    # The container's environment as the stage set it: per-worker mode, a larger load reserve, two workers per model.
    deploy_endpoint(
        aws,
        {"MME_MODEL_HOST": "per-worker", "MME_LOAD_MEMORY_RESERVE_MB": "812", "SAGEMAKER_MODEL_SERVER_WORKERS": "2"},
    )
    status, out, err = cost(*inputs, "--stage", "dev", "--region", REGION, "--format", "markdown", "--models", "10",
                            "--models", "40")  # fmt: skip
    assert status == 0, err
    fits = per_instance(8 * 1024, reserve_mb=812, workers=2)
    assert fits == 12  # (8192 - 1024 - 812) // 500
    per_instance_month = 0.10 * 730 + 20 * 0.10  # no CloudWatch data: always awake; 20 GB volumes
    single = 0.05 * 730 + 20 * 0.10  # ml.t2.medium holds (4096 - 1836) // 500 = 4
    rows = markdown_rows(out)
    assert rows[10][:4] == ["2 x ml.m5.large", usd(2 * per_instance_month), "10 x ml.t2.medium", usd(10 * single)]
    assert rows[40][:2] == [f"{math.ceil(40 / fits)} x ml.m5.large", usd(4 * per_instance_month)]
    assert f"Stage dev in {REGION} (endpoint {ENDPOINT}): 2 x ml.m5.large" in out
    assert "instances: 2 (the variant's current count, endpoint InService)" in out
    assert "load reserve, MiB: 812 (model dev-model's container environment)" in out
    assert "model copies per model (workers holding a runtime): 2" in out
    assert "volume per instance, GB: 20 (endpoint config dev-config)" in out
    assert "hours awake per month: 730 (assumed always awake (730 h): CloudWatch has no CPUUtilization" in out
    # Three 10 MB versions under models/ (an overwritten key bills twice); capture/ is not the store's models.
    assert "S3, 0.03 GB of models" in out
    assert "per-model metrics: on (model dev-model's container environment, MME_METRICS_ENABLED)" in out
    assert "up to 40 models x 9 metrics USD 108.00/month" in out


def test_a_deployed_stage_without_model_metrics_pays_for_neither_them_nor_their_alarm(
    aws: boto3.session.Session, inputs: list[str]
) -> None:
    deploy_store(aws)
    deploy_endpoint(aws, {"MME_METRICS_ENABLED": "false"})  # as a stage with model_metrics false sets it
    status, out, err = cost(*inputs, "--stage", "dev", "--region", REGION, "--models", "10")
    assert status == 0, err
    assert "per-model metrics: off (model dev-model's container environment, MME_METRICS_ENABLED)" in out
    assert f"6 alarms and 1 dashboard while awake {usd(6 * 0.10 + 3)}" in out
    assert "Per-model metrics" not in out
    assert "per-model metrics: none, and no alarm on them (the stage's model_metrics is false)" in out


def test_a_deployed_shared_mode_stage_keeps_its_headroom_free_and_one_copy_of_each_model(
    aws: boto3.session.Session, inputs: list[str]
) -> None:
    deploy_store(aws)
    # Shared mode (the default): two thin workers per model still hold one copy of it, in the model host.
    deploy_endpoint(aws, {"MME_MEMORY_HEADROOM_MB": "1024", "SAGEMAKER_MODEL_SERVER_WORKERS": "2"})
    status, out, err = cost(*inputs, "--stage", "dev", "--region", REGION, "--models", "10")
    assert status == 0, err
    assert per_instance(8 * 1024, reserve_mb=1024) == 24  # (8192 - 1024 - 1024) // 250
    assert "models per ml.m5.large: 24 = (8 GiB - 1024 MiB fixed - 1024 MiB load reserve) // 250 MiB" in out
    assert "load reserve, MiB: 1024 (model dev-model's container environment)" in out
    assert (
        "model copies per model (workers holding a runtime): 1 (model dev-model's container environment, shared" in out
    )


def test_hours_awake_come_from_cloudwatch_datapoints(aws: boto3.session.Session, inputs: list[str]) -> None:
    deploy_store(aws)
    deploy_endpoint(aws, {})
    cloudwatch = aws.client("cloudwatch")
    now = datetime.now(UTC)
    # Awake 20 of the last 40 hours, minute datapoints in each: half a month, 365 h. Half-hour offsets keep every
    # datapoint inside one hourly period however the periods are aligned.
    awake_hours = [*range(0, 10), *range(30, 40)]
    for hour in awake_hours:
        for minute in (0, 10, 20):
            cloudwatch.put_metric_data(
                Namespace="/aws/sagemaker/Endpoints",
                MetricData=[
                    {
                        "MetricName": "CPUUtilization",
                        "Dimensions": [
                            {"Name": "EndpointName", "Value": ENDPOINT},
                            {"Name": "VariantName", "Value": "AllTraffic"},
                        ],
                        "Timestamp": now - timedelta(hours=hour + 0.5, minutes=minute - 10),
                        "Value": 12.5,
                    }
                ],
            )
    status, out, err = cost(*inputs, "--stage", "dev", "--region", REGION, "--format", "markdown", "--models", "10")
    assert status == 0, err
    hours = 730 * 20 / 40
    assert "hours awake per month: 365 (CloudWatch: 20 of the last 40 hours have CPUUtilization datapoints" in out
    assert markdown_rows(out)[10][:2] == ["2 x ml.m5.large", usd(2 * (0.10 * hours + 20 * 0.10 * hours / 730))]


@pytest.mark.parametrize("endpoint_parameter", [False, True], ids=["destroyed", "asleep-in-its-stack"])
def test_an_asleep_stage_costs_only_its_store(
    aws: boto3.session.Session, inputs: list[str], endpoint_parameter: bool
) -> None:
    deploy_store(aws)
    if endpoint_parameter:  # asleep: the endpoint stack and its parameter stay, the endpoint does not
        aws.client("ssm").put_parameter(Name="/mme/dev/endpoint-name", Value=ENDPOINT, Type="String")
    status, out, err = cost(*inputs, "--stage", "dev", "--region", REGION)
    assert status == 0, err
    assert "Stage dev in us-east-1: endpoint asleep or destroyed, the store only" in out
    assert f"Billed for the stage: USD {usd(1.0 + 0.03 * 0.02)}/month" in out
    assert "ml.m5.large" not in out.split("Assumptions:")[0]  # no table: nothing runs
    assert "Per-model metrics" not in out  # no container writes any
    assert "npx cdk deploy Mme-dev-Endpoint" in out


def test_an_asleep_stage_costed_awake_on_request(aws: boto3.session.Session, inputs: list[str]) -> None:
    deploy_store(aws)
    status, out, err = cost(*inputs, "--stage", "dev", "--region", REGION, "--hours-awake", "176", "--models", "10",
                            "--format", "markdown")  # fmt: skip
    assert status == 0, err
    assert "endpoint asleep or destroyed, costed awake" in out
    assert markdown_rows(out)[10][:2] == ["1 x ml.m5.large", usd(0.10 * 176 + 30 * 0.10 * 176 / 730)]


def test_a_stage_that_is_not_deployed_says_so(aws: boto3.session.Session, inputs: list[str]) -> None:
    status, _, err = cost(*inputs, "--stage", "dev", "--owner", "alice", "--region", REGION)
    assert status == 2
    assert "stage 'dev' is not deployed in us-east-1 with owner 'alice'" in err
    assert "Deploy Mme-alice-dev-ModelStore" in err


def test_an_owner_needs_a_stage(inputs: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    status, _, err = cost(*inputs, "--owner", "alice")
    assert status == 2
    assert "--owner names the owner of a --stage" in err
    monkeypatch.setenv("MME_OWNER", "alice")  # exported for the stage commands: no reason to refuse
    assert cost(*inputs)[0] == 0


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--hours-awake", "800", "from 0 to 730 hours"),
        ("--instances", "0", "at least 1 instance"),
        ("--models", "0", "1 or more"),
    ],
)
def test_impossible_figures_are_refused(inputs: list[str], option: str, value: str, message: str) -> None:
    status, _, err = cost(*inputs, option, value)
    assert status == 2
    assert message in err
