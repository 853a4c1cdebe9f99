"""What a stage costs per month, on one multi-model endpoint against one endpoint per model.

Two inputs are files in the repository, so every figure can be traced: the price table (`prices.toml`, approximate
list prices with their source and date) and the measured density (`bench/results/density.json`, written by
`make bench-density`: the memory the container takes with no model, and what each loaded model adds). How many
models one instance holds is computed from them, never assumed:

    models per instance = (instance memory - fixed part - load reserve) // (per-model increment x copies per model)

where the fixed part is the larger of the measured base (the container with no model) and the fit's intercept (the
base plus what the first model brings that every further model shares), the load reserve is the memory the
container keeps free at each load (``MME_MEMORY_HEADROOM_MB`` in shared mode, ``MME_LOAD_MEMORY_RESERVE_MB`` in
per-worker mode; `handler/memory.py`), and the copies per model are its workers in per-worker mode (each holds the
model and a TensorFlow runtime), one in shared mode.

A deployed stage is read as it runs: its endpoint's instance type, live instance count and volume; the model's
container environment (load reserve, workers per model, whether per-model metrics are on); and the hours it was
awake, from CloudWatch.

Per-model metrics (`handler/telemetry/names.py`) are custom CloudWatch metrics, billed per metric-month pro-rated by
the hours each receives data, so what they cost depends on traffic nobody here knows: the estimate gives their upper
bound, every model sending every metric every hour the endpoint is awake.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from handler.settings import ServingSettings, SettingsError
from handler.telemetry.names import METRIC_UNITS
from mme import MmeError
from mme.aws.stage import DeployedStage

#: The price table shipped with this module.
PRICES_FILE = Path(__file__).resolve().with_name("prices.toml")
#: Where `make bench-density` writes the measured density (the repository's bench/results/).
DENSITY_FILE = Path(__file__).resolve().parents[2] / "bench" / "results" / "density.json"
#: Hours in the month every price here is per (AWS bills 730 hours as a month).
HOURS_PER_MONTH = 730.0
#: What is assumed without a reading: the stage's defaults (stacks/settings.py) and always awake.
DEFAULT_INSTANCE_TYPE = "ml.m5.large"
DEFAULT_INSTANCE_COUNT = 1
DEFAULT_VOLUME_SIZE_GB = 30
DEFAULT_MODEL_COUNTS = (10, 50, 200)
#: What the endpoint stack holds besides instances and volumes (README, "Deploying to AWS"): six alarms of its own,
#: one more with per-model metrics (the worst model's error rate, stacks/model_monitoring.py), one dashboard. The
#: model store stack holds one KMS key, billed whether the endpoint exists or not.
ENDPOINT_ALARMS = 6
MODEL_METRICS_ALARMS = 1
ENDPOINT_DASHBOARDS = 1
STORE_KMS_KEYS = 1
#: Where SageMaker publishes an endpoint's instance metrics; an hour with a datapoint is an hour it existed.
ENDPOINT_METRICS_NAMESPACE = "/aws/sagemaker/Endpoints"
AWAKE_METRIC = "CPUUtilization"
#: The variant every stage's endpoint serves (stacks/multi_model_endpoint.py).
VARIANT_NAME = "AllTraffic"
#: Custom metrics each model can create: every per-model metric the container writes (handler/telemetry/names.py).
METRICS_PER_MODEL = len(METRIC_UNITS)

_GIB = 1024**3
_MIB = 1024**2
_GB = 1000**3


class UnknownInstanceTypeError(MmeError):
    """The instance type has no row in the price table."""


class DensityNotFoundError(MmeError):
    """The measured density file is missing or unreadable."""


class PriceTableError(MmeError):
    """The price table is missing or malformed."""


class CostError(MmeError):
    """The configuration cannot be costed (an instance type too small for one model, no model count)."""


@dataclass(frozen=True, kw_only=True)
class InstanceType:
    """One SageMaker instance type: its on-demand price and size."""

    name: str
    usd_per_hour: float
    vcpu: int
    memory_gib: float

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * _GIB)


@dataclass(frozen=True, kw_only=True)
class PriceTable:
    """The prices in `prices.toml`: instance types, and the per-month prices of what else a stage holds."""

    path: Path
    region: str
    source: str
    taken: str
    instance_types: dict[str, InstanceType]
    ebs_usd_per_gb_month: float
    kms_key_usd_month: float
    alarm_usd_month: float
    dashboard_usd_month: float
    s3_usd_per_gb_month: float
    #: One custom metric receiving data every hour of the month (the first tier's price, the highest).
    custom_metric_usd_month: float

    def instance(self, name: str) -> InstanceType:
        """The row of instance type `name`.

        Raises:
            UnknownInstanceTypeError: no such row; the message names the known types and the file.
        """
        try:
            return self.instance_types[name]
        except KeyError:
            known = ", ".join(sorted(self.instance_types, key=lambda t: self.instance_types[t].usd_per_hour))
            raise UnknownInstanceTypeError(
                f"no price for instance type {name!r}: the price table ({self.path}) knows {known}; "
                "add a row with its price from the SageMaker pricing page"
            ) from None


def load_prices(path: Path = PRICES_FILE) -> PriceTable:
    """Read the price table at `path`.

    Raises:
        PriceTableError: the file is missing, not TOML, or lacks a price.
    """
    try:
        raw = tomllib.loads(path.read_text())
        other = raw["other"]
        return PriceTable(
            path=path,
            region=str(raw["region"]),
            source=str(raw["source"]),
            taken=str(raw["taken"]),
            instance_types={
                name: InstanceType(
                    name=name,
                    usd_per_hour=float(row["usd_per_hour"]),
                    vcpu=int(row["vcpu"]),
                    memory_gib=float(row["memory_gib"]),
                )
                for name, row in raw["instance_types"].items()
            },
            ebs_usd_per_gb_month=float(other["ebs_usd_per_gb_month"]),
            kms_key_usd_month=float(other["kms_key_usd_month"]),
            alarm_usd_month=float(other["alarm_usd_month"]),
            dashboard_usd_month=float(other["dashboard_usd_month"]),
            s3_usd_per_gb_month=float(other["s3_usd_per_gb_month"]),
            custom_metric_usd_month=float(other["custom_metric_usd_month"]),
        )
    except OSError as error:
        raise PriceTableError(f"cannot read the price table {path}: {error.strerror or error}") from None
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise PriceTableError(f"the price table {path} is malformed ({type(error).__name__}: {error})") from None


@dataclass(frozen=True, kw_only=True)
class Density:
    """What the container costs in memory, as `bench/density.py` measured it (PSS, bytes)."""

    path: Path
    when: str
    base_bytes: int
    intercept_bytes: int
    per_model_bytes: int
    #: Workers per model during the measurement; each worker holds its own TensorFlow runtime.
    workers_per_model: int = 1

    @property
    def fixed_bytes(self) -> int:
        """The memory taken before the first model's own share: the larger of the base and the fit's intercept."""
        return max(self.base_bytes, self.intercept_bytes)

    def per_model_for(self, workers_per_model: int) -> int:
        """The increment of one model served by `workers_per_model` workers (scaled from the measured count)."""
        return math.ceil(self.per_model_bytes * workers_per_model / self.workers_per_model)

    def models_per_instance(self, instance: InstanceType, *, reserve_mb: int, workers_per_model: int = 1) -> int:
        """How many models stay loaded at once on `instance`, keeping `reserve_mb` MiB free for a load."""
        room = instance.memory_bytes - self.fixed_bytes - reserve_mb * _MIB
        return max(room // self.per_model_for(workers_per_model), 0)


def load_density(path: Path = DENSITY_FILE) -> Density:
    """Read the measured density at `path`.

    Raises:
        DensityNotFoundError: the file is missing or lacks a figure; the message says how to measure it.
    """
    remedy = "measure it with `make bench-density` (writes bench/results/density.json), or give --density FILE"
    try:
        raw = json.loads(path.read_text())
        density = Density(
            path=path,
            when=str(raw["when"]),
            base_bytes=int(raw["base_bytes"]),
            intercept_bytes=int(raw["intercept_bytes"]),
            per_model_bytes=int(raw["per_model_bytes"]),
            workers_per_model=int(raw.get("workers_per_model", 1)),
        )
    except FileNotFoundError:
        raise DensityNotFoundError(f"no measured density at {path}: {remedy}") from None
    except OSError as error:
        raise DensityNotFoundError(f"cannot read the measured density {path}: {error.strerror}; {remedy}") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise DensityNotFoundError(
            f"the measured density {path} is malformed ({type(error).__name__}: {error}); {remedy}"
        ) from None
    if density.per_model_bytes <= 0 or density.workers_per_model <= 0:
        raise DensityNotFoundError(f"the measured density {path} has no positive per-model increment; {remedy}")
    return density


#: The figures of an endpoint's bill, as the report names them.
_FIGURES = {
    "instance_type": "instance type",
    "instance_count": "instances",
    "hours_awake": "hours awake per month",
    "volume_size_gb": "volume per instance, GB",
    "reserve_mb": "load reserve, MiB",
    "workers_per_model": "model copies per model (workers holding a runtime)",
    "model_metrics": "per-model metrics",
}

_STAGE_DEFAULT = "a stage's default, stacks/settings.py"
_CONTAINER_DEFAULT = "the container's default, handler/settings.py"
_DEFAULT_SOURCES = {
    "instance_type": _STAGE_DEFAULT,
    "instance_count": _STAGE_DEFAULT,
    "hours_awake": "assumed: always awake",
    "volume_size_gb": _STAGE_DEFAULT,
    "reserve_mb": _CONTAINER_DEFAULT,
    "workers_per_model": _CONTAINER_DEFAULT,
    "model_metrics": _STAGE_DEFAULT,
}


@dataclass(frozen=True, kw_only=True)
class EndpointConfiguration:
    """What an endpoint is billed for. Defaults are a stage's defaults (stacks/settings.py), always awake."""

    instance_type: str = DEFAULT_INSTANCE_TYPE
    instance_count: int = DEFAULT_INSTANCE_COUNT
    hours_awake: float = HOURS_PER_MONTH
    volume_size_gb: int = DEFAULT_VOLUME_SIZE_GB
    #: What the model's container keeps free at a load, and how many copies of each model it holds
    #: (:attr:`~handler.settings.ServingSettings.memory_kept_free_mb`, ``runtimes_per_model``).
    reserve_mb: int = ServingSettings().memory_kept_free_mb
    workers_per_model: int = ServingSettings().runtimes_per_model
    #: Whether the container writes per-model metrics (``MME_METRICS_ENABLED``, a stage's `model_metrics`), which
    #: also adds their alarm.
    model_metrics: bool = True
    #: Where each figure (a field name) came from; a figure not named is the default.
    sources: Mapping[str, str] = field(default_factory=dict)

    def described(self) -> tuple[str, ...]:
        """One line per figure: its value and where it came from."""
        lines = []
        for key, label in _FIGURES.items():
            value = getattr(self, key)
            if isinstance(value, bool):
                shown = "on" if value else "off"
            else:
                shown = f"{value:.0f}" if isinstance(value, float) else str(value)
            lines.append(f"{label}: {shown} ({self.sources.get(key, _DEFAULT_SOURCES[key])})")
        return tuple(lines)

    def overridden(
        self, *, instance_type: str | None = None, instance_count: int | None = None, hours_awake: float | None = None
    ) -> EndpointConfiguration:
        """This configuration with the figures given as options in place of the read or default ones."""
        given = {
            key: value
            for key, value in (
                ("instance_type", instance_type),
                ("instance_count", instance_count),
                ("hours_awake", hours_awake),
            )
            if value is not None
        }
        if "instance_count" in given and given["instance_count"] < 1:
            raise CostError(f"--instances {given['instance_count']}: an endpoint has at least 1 instance")
        if "hours_awake" in given and not 0 <= given["hours_awake"] <= HOURS_PER_MONTH:
            raise CostError(f"--hours-awake {given['hours_awake']:g}: from 0 to {HOURS_PER_MONTH:.0f} hours a month")
        if "hours_awake" in given:
            given["hours_awake"] = float(given["hours_awake"])
        return replace(self, **given, sources={**self.sources, **dict.fromkeys(given, "option")})


@dataclass(frozen=True, kw_only=True)
class StageReading:
    """A deployed stage as it runs: `endpoint` is None while the endpoint does not exist (asleep or destroyed)."""

    stage: DeployedStage
    endpoint: EndpointConfiguration | None
    store_bytes: int


@dataclass(frozen=True, kw_only=True)
class CostRow:
    """The monthly cost of `models` models on one multi-model endpoint and on one endpoint each (USD).

    `model_metrics_usd` is the most the multi-model endpoint's per-model metrics of `models` models cost (every
    model sending every metric every hour awake), apart from `mme_usd`; 0 with per-model metrics off.
    """

    models: int
    instances: int
    mme_usd: float
    single_endpoints: int
    single_usd: float
    model_metrics_usd: float = 0.0

    @property
    def saving_usd(self) -> float:
        return self.single_usd - self.mme_usd

    @property
    def saving_percent(self) -> float:
        return 100.0 * self.saving_usd / self.single_usd if self.single_usd else 0.0


@dataclass(frozen=True, kw_only=True)
class CostEstimate:
    """The answer of `mme cost`: a row per model count, what it was computed from, and the stage's other costs."""

    title: str
    endpoint: EndpointConfiguration | None
    instance: InstanceType | None
    models_per_instance: int
    single_instance: InstanceType | None
    rows: tuple[CostRow, ...]
    #: The rest of the stage's monthly bill, by item; the same for every row.
    other_usd: dict[str, float]
    assumptions: tuple[str, ...] = field(default=())

    @property
    def other_total_usd(self) -> float:
        return sum(self.other_usd.values())


def hours_awake_per_month(
    cloudwatch: Any, endpoint_name: str, *, now: datetime, variant_name: str = VARIANT_NAME
) -> tuple[float, str] | None:
    """Hours per month the endpoint existed, from the hours of the last month that have a datapoint of its
    instance metric (`CPUUtilization`, reported while an instance runs), or None when there is none.

    The share is taken over the hours since the first datapoint, so a stage deployed last week is not counted as
    asleep for the weeks before it existed; a stage slept and woken again keeps its history (the endpoint's name
    stays the same). Returns the hours and a sentence saying how they were found.
    """
    period = 3600
    start = now - timedelta(hours=HOURS_PER_MONTH)
    answer = cloudwatch.get_metric_statistics(
        Namespace=ENDPOINT_METRICS_NAMESPACE,
        MetricName=AWAKE_METRIC,
        Dimensions=[
            {"Name": "EndpointName", "Value": endpoint_name},
            {"Name": "VariantName", "Value": variant_name},
        ],
        StartTime=start,
        EndTime=now,
        Period=period,
        Statistics=["SampleCount"],
    )
    hours = sorted(point["Timestamp"] for point in answer.get("Datapoints", []) if point.get("SampleCount", 0) > 0)
    if not hours:
        return None
    # Whole seconds: CloudWatch's timestamps carry milliseconds at most, and a period is a whole number of them.
    elapsed = int((now - hours[0]).total_seconds())
    observed = min(-(-elapsed // period), int(HOURS_PER_MONTH))
    observed = max(observed, len(hours))
    awake = HOURS_PER_MONTH * len(hours) / observed
    return awake, (
        f"CloudWatch: {len(hours)} of the last {observed} hours have {AWAKE_METRIC} datapoints of {endpoint_name} "
        f"({100 * len(hours) / observed:.0f}% awake)"
    )


def _is_missing_endpoint(error: ClientError) -> bool:
    details = error.response.get("Error", {})
    return details.get("Code") == "ValidationException" and "Could not find" in str(details.get("Message", ""))


def _container_settings(sagemaker: Any, model_name: str) -> ServingSettings:
    model = sagemaker.describe_model(ModelName=model_name)
    container = model.get("PrimaryContainer") or (model.get("Containers") or [{}])[0]
    try:
        return ServingSettings.from_env(container.get("Environment", {}))
    except SettingsError as error:
        raise CostError(f"model {model_name}'s container environment is not the container's: {error}") from None


def store_bytes(s3: Any, stage: DeployedStage) -> int:
    """Bytes of every object version under the stage's model prefix (the bucket is versioned: old ones bill too)."""
    total = 0
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=stage.bucket, Prefix=stage.model_prefix):
        total += sum(int(version.get("Size", 0)) for version in page.get("Versions", []))
    return total


def read_stage(session: Any, stage: DeployedStage, *, now: datetime | None = None) -> StageReading:
    """Read what `stage` is billed for with a boto3 `session`: its endpoint (None when it does not exist), the
    container's load reserve, workers and per-model metrics switch, the hours it was awake (CloudWatch, else 730
    assumed) and its store."""
    now = now or datetime.now(UTC)
    store = store_bytes(session.client("s3"), stage)
    if stage.endpoint_name is None:
        return StageReading(stage=stage, endpoint=None, store_bytes=store)
    sagemaker = session.client("sagemaker")
    try:
        endpoint = sagemaker.describe_endpoint(EndpointName=stage.endpoint_name)
    except ClientError as error:
        if _is_missing_endpoint(error):
            return StageReading(stage=stage, endpoint=None, store_bytes=store)
        raise
    config = sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    variants = config["ProductionVariants"]
    variant = next((v for v in variants if v["VariantName"] == VARIANT_NAME), variants[0])
    live = next((v for v in endpoint.get("ProductionVariants", []) if v["VariantName"] == variant["VariantName"]), {})
    count = int(live.get("CurrentInstanceCount") or variant.get("InitialInstanceCount") or 1)
    settings = _container_settings(sagemaker, variant["ModelName"])
    found = hours_awake_per_month(
        session.client("cloudwatch"), stage.endpoint_name, now=now, variant_name=variant["VariantName"]
    )
    hours, hours_source = found or (
        HOURS_PER_MONTH,
        f"assumed always awake ({HOURS_PER_MONTH:.0f} h): CloudWatch has no {AWAKE_METRIC} of {stage.endpoint_name} "
        "in the last month",
    )
    volume = int(variant.get("VolumeSizeInGB", 0))  # none: NVMe instance storage, no EBS volume
    container = f"model {variant['ModelName']}'s container environment"
    return StageReading(
        stage=stage,
        store_bytes=store,
        endpoint=EndpointConfiguration(
            instance_type=variant["InstanceType"],
            instance_count=count,
            hours_awake=hours,
            volume_size_gb=volume,
            reserve_mb=settings.memory_kept_free_mb,
            workers_per_model=settings.runtimes_per_model,
            model_metrics=settings.metrics_enabled,
            sources={
                "instance_type": f"endpoint config {endpoint['EndpointConfigName']}",
                "instance_count": f"the variant's current count, endpoint {endpoint.get('EndpointStatus', '?')}",
                "hours_awake": hours_source,
                "volume_size_gb": f"endpoint config {endpoint['EndpointConfigName']}",
                "reserve_mb": container,
                "workers_per_model": f"{container}, {settings.model_host} mode",
                "model_metrics": f"{container}, MME_METRICS_ENABLED",
            },
        ),
    )


def _volume_usd(prices: PriceTable, gb: int, hours: float) -> float:
    return gb * prices.ebs_usd_per_gb_month * hours / HOURS_PER_MONTH


def model_metrics_usd(endpoint: EndpointConfiguration, models: int, *, prices: PriceTable) -> float:
    """The most the per-model metrics of `models` models cost a month on `endpoint`: `METRICS_PER_MODEL` custom
    metrics each, receiving data every hour the endpoint is awake (a metric is billed for the hours it receives
    data), at the first tier's price. 0 when the endpoint writes no per-model metrics."""
    if not endpoint.model_metrics:
        return 0.0
    metric_months = models * METRICS_PER_MODEL * endpoint.hours_awake / HOURS_PER_MONTH
    return metric_months * prices.custom_metric_usd_month


def estimate_cost(
    endpoint: EndpointConfiguration,
    model_counts: Sequence[int],
    *,
    prices: PriceTable,
    density: Density,
    title: str,
    store_bytes: int | None = None,
    region: str | None = None,
) -> CostEstimate:
    """The monthly cost of `model_counts` models on `endpoint`, against one endpoint per model.

    The multi-model endpoint gets as many instances as it has, or more when the models would not all stay loaded
    (instances x hours awake x price, plus each instance's volume while it exists). One endpoint per model runs
    the cheapest instance type of the table that holds one model, always awake (it has no way to sleep per model),
    with the same volume.

    Raises:
        UnknownInstanceTypeError: the endpoint's instance type has no price.
        CostError: no model count, or the instance type holds no model.
    """
    if not model_counts or min(model_counts) < 1:
        raise CostError("give at least one model count of 1 or more (--models N)")
    instance = prices.instance(endpoint.instance_type)
    workers = endpoint.workers_per_model
    per_instance = density.models_per_instance(instance, reserve_mb=endpoint.reserve_mb, workers_per_model=workers)
    fitting = [
        t
        for t in prices.instance_types.values()
        if density.models_per_instance(t, reserve_mb=endpoint.reserve_mb, workers_per_model=workers) >= 1
    ]
    if per_instance < 1 or not fitting:
        raise CostError(
            f"{instance.name} ({instance.memory_gib:g} GiB) holds no model: the container's fixed "
            f"{density.fixed_bytes / _MIB:.0f} MiB, the load reserve of {endpoint.reserve_mb} MiB and one model's "
            f"{density.per_model_for(workers) / _MIB:.0f} MiB do not fit; choose a larger --instance-type"
        )
    single = min(fitting, key=lambda t: (t.usd_per_hour, t.name))
    single_each = single.usd_per_hour * HOURS_PER_MONTH + _volume_usd(prices, endpoint.volume_size_gb, HOURS_PER_MONTH)
    rows = []
    for models in model_counts:
        instances = max(endpoint.instance_count, math.ceil(models / per_instance))
        mme = instances * (
            instance.usd_per_hour * endpoint.hours_awake
            + _volume_usd(prices, endpoint.volume_size_gb, endpoint.hours_awake)
        )
        rows.append(
            CostRow(
                models=models,
                instances=instances,
                mme_usd=mme,
                single_endpoints=models,
                single_usd=models * single_each,
                model_metrics_usd=model_metrics_usd(endpoint, models, prices=prices),
            )
        )
    awake_share = endpoint.hours_awake / HOURS_PER_MONTH
    alarms = ENDPOINT_ALARMS + (MODEL_METRICS_ALARMS if endpoint.model_metrics else 0)
    other = {
        "the store's KMS key": STORE_KMS_KEYS * prices.kms_key_usd_month,
        f"{alarms} alarms and {ENDPOINT_DASHBOARDS} dashboard while awake": awake_share
        * (alarms * prices.alarm_usd_month + ENDPOINT_DASHBOARDS * prices.dashboard_usd_month),
    }
    if store_bytes is not None:
        other[f"S3, {store_bytes / _GB:.2f} GB of models"] = store_bytes / _GB * prices.s3_usd_per_gb_month
    return CostEstimate(
        title=title,
        endpoint=endpoint,
        instance=instance,
        models_per_instance=per_instance,
        single_instance=single,
        rows=tuple(rows),
        other_usd=other,
        assumptions=_assumptions(
            endpoint, instance, single, per_instance, prices=prices, density=density, region=region
        ),
    )


def asleep_cost(stage: StageReading, *, prices: PriceTable, title: str) -> CostEstimate:
    """The monthly cost of a stage whose endpoint does not exist: its store only (the KMS key and the models)."""
    gb = stage.store_bytes / _GB
    return CostEstimate(
        title=title,
        endpoint=None,
        instance=None,
        models_per_instance=0,
        single_instance=None,
        rows=(),
        other_usd={
            "the store's KMS key": STORE_KMS_KEYS * prices.kms_key_usd_month,
            f"S3, {gb:.2f} GB of models": gb * prices.s3_usd_per_gb_month,
        },
        assumptions=(
            "the endpoint does not exist (asleep or destroyed): no instance, volume, alarm, dashboard or per-model "
            f"metric is billed; wake it with `npx cdk deploy {stage.stage.endpoint_stack}`",
            "to see what it costs awake: --hours-awake H (and --instance-type, --instances)",
            *_price_notes(prices, stage.stage.region),
        ),
    )


def planned_cost(
    model_counts: Sequence[int],
    *,
    prices: PriceTable,
    density: Density,
    instance_type: str | None = None,
    instance_count: int | None = None,
    hours_awake: float | None = None,
) -> CostEstimate:
    """The monthly cost of a stage not read from AWS: a stage's defaults with the figures given in their place."""
    endpoint = EndpointConfiguration().overridden(
        instance_type=instance_type, instance_count=instance_count, hours_awake=hours_awake
    )
    title = (
        f"A stage with {endpoint.instance_count} x {endpoint.instance_type}, awake {endpoint.hours_awake:.0f} h a "
        f"month, {prices.region} prices"
    )
    return estimate_cost(endpoint, model_counts, prices=prices, density=density, title=title)


def stage_cost(
    session: Any,
    stage: DeployedStage,
    model_counts: Sequence[int],
    *,
    prices: PriceTable,
    density: Density,
    instance_type: str | None = None,
    instance_count: int | None = None,
    hours_awake: float | None = None,
    now: datetime | None = None,
) -> CostEstimate:
    """The monthly cost of deployed `stage` as it runs (`read_stage`), with the figures given in place of the read
    ones. A stage whose endpoint does not exist costs its store only, unless `hours_awake` asks what it would cost
    awake (then with a stage's defaults for what cannot be read)."""
    reading = read_stage(session, stage, now=now)
    name = f"Stage {stage.names.qualified} in {stage.region}"
    if reading.endpoint is None and hours_awake is None:
        return asleep_cost(reading, prices=prices, title=f"{name}: endpoint asleep or destroyed, the store only")
    endpoint = (reading.endpoint or EndpointConfiguration()).overridden(
        instance_type=instance_type, instance_count=instance_count, hours_awake=hours_awake
    )
    state = f"endpoint {stage.endpoint_name}" if reading.endpoint else "endpoint asleep or destroyed, costed awake"
    title = (
        f"{name} ({state}): {endpoint.instance_count} x {endpoint.instance_type}, awake "
        f"{endpoint.hours_awake:.0f} h a month"
    )
    return estimate_cost(
        endpoint,
        model_counts,
        prices=prices,
        density=density,
        title=title,
        store_bytes=reading.store_bytes,
        region=stage.region,
    )


def _price_notes(prices: PriceTable, region: str | None) -> tuple[str, ...]:
    notes = [
        f"prices: {prices.path.name}, approximate {prices.region} on-demand list prices taken {prices.taken} "
        f"({prices.source}); check them before quoting"
    ]
    if region and region != prices.region:
        notes.append(f"the stage is in {region}, priced at {prices.region}'s prices: {region}'s differ")
    return tuple(notes)


def _assumptions(
    endpoint: EndpointConfiguration,
    instance: InstanceType,
    single: InstanceType,
    per_instance: int,
    *,
    prices: PriceTable,
    density: Density,
    region: str | None,
) -> tuple[str, ...]:
    workers = endpoint.workers_per_model
    return (
        *endpoint.described(),
        f"models per {instance.name}: {per_instance} = ({instance.memory_gib:g} GiB - "
        f"{density.fixed_bytes / _MIB:.0f} MiB fixed - {endpoint.reserve_mb} MiB load reserve) // "
        f"{density.per_model_for(workers) / _MIB:.0f} MiB per model",
        f"density: {density.path.name}, measured {density.when} (base {density.base_bytes / _MIB:.0f} MiB, "
        f"fit intercept {density.intercept_bytes / _MIB:.0f} MiB, {density.per_model_bytes / _MIB:.0f} MiB per model "
        f"with {density.workers_per_model} worker per model); measured with the demo models: a larger model adds its "
        "weights",
        "instance memory is counted whole: the instance's OS and SageMaker's agents take some of it, which the load "
        "reserve partly covers",
        "instances on the multi-model endpoint: the configured count, or more so that every model stays loaded "
        "(fewer instances still serve them all, loading and evicting on demand)",
        f"one endpoint per model: the cheapest instance type that holds one model, {single.name} "
        f"(USD {single.usd_per_hour:g}/h), {HOURS_PER_MONTH:.0f} h each, with a {endpoint.volume_size_gb} GB volume",
        f"volumes: USD {prices.ebs_usd_per_gb_month:g} per GB-month while the instance exists",
        *_model_metrics_notes(endpoint, prices),
        *_price_notes(prices, region),
    )


def _model_metrics_notes(endpoint: EndpointConfiguration, prices: PriceTable) -> tuple[str, ...]:
    if not endpoint.model_metrics:
        return ("per-model metrics: none, and no alarm on them (the stage's model_metrics is false)",)
    return (
        f"per-model metrics, an upper bound: {METRICS_PER_MODEL} custom metrics per model, each billed USD "
        f"{prices.custom_metric_usd_month:.2f} per metric-month (the first tier, an account's first 10,000 metrics, "
        f"the dearest) pro-rated by the hours it receives data, counted for every hour awake "
        f"({endpoint.hours_awake:.0f} h); a model without requests sends only Loaded while it is loaded, and nothing "
        "once unloaded",
        "per-model metrics are the multi-model endpoint's own (one endpoint per model gets SageMaker's per-endpoint "
        "metrics free), so they are in no column; their log lines are billed as CloudWatch Logs ingestion, not counted "
        f"here; their alarm (a Metrics Insights query) is counted as one alarm of USD {prices.alarm_usd_month:.2f}; "
        "a stage's model_metrics: false removes them and the alarm",
    )
