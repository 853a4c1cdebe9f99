"""Typed, validated settings for the CDK app.

The only place that knows the shape of the `cdk.json` context. `app.py` calls `load_app_settings` once with the
whole context; everything below it receives frozen dataclasses and never reads context or the environment itself.

Context layout (every stage key is optional; defaults are the dataclass field defaults below)::

    "repository": "owner/repo",          # CodeStar connection repository; "" = no pipeline (direct deploy)
    "branch": "main",
    "connection_arn": "arn:aws:codeconnections:<region>:<account>:connection/<id>",
    "direct": false,                     # true (usually `-c direct=true`): deploy the stages directly anyway
    "owner": "alice",                    # direct deploys only; default: the OS user name
    "stages": {                          # deployment order for the pipeline
        "dev": {"instance_type": "ml.m5.large"},
        "prod": {"min_instance_count": 2, "max_instance_count": 4, "default_tokenizer": "tokenizers/bert-base-cased"}
    }

A bad value raises `SettingsError` whose message names the offending key and what is allowed, so `cdk synth`
fails before anything is built.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from handler.telemetry.names import CAPTURE_CONTENTS, CAPTURE_PREFIX, METRICS_NAMESPACE
from mme.aws.names import NAME_PATTERN, StageNames, owner_from_user_name

INSTANCE_TYPE_PATTERN = re.compile(r"^ml\.[a-z][a-z0-9-]*\.(medium|large|xlarge|[1-9][0-9]*xlarge)$")
CONNECTION_ARN_PATTERN = re.compile(
    r"^arn:aws[a-z-]*:(codestar-connections|codeconnections):[a-z0-9-]+:\d{12}:connection/[A-Za-z0-9-]+$"
)
REPOSITORY_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+$")
ACCOUNT_PATTERN = re.compile(r"^(\d{12})?$")
REGION_PATTERN = re.compile(r"^([a-z]{2}(-[a-z]+)+-\d)?$")
JVM_HEAP_PATTERN = re.compile(r"^[1-9][0-9]*[kKmMgG]$")
PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*/$")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MODEL_CACHE_SETTINGS = ("Enabled", "Disabled")
#: The container's MME_MODEL_HOST values (handler/settings.py MODEL_HOST_MODES; a test keeps them equal).
MODEL_HOST_SETTINGS = ("shared", "per-worker")
SCHEDULE_PATTERN = re.compile(r"^((cron|at)\([^()]+\))?\Z")
TIMEZONE_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*\Z")
#: The retention periods CloudWatch Logs accepts (PutRetentionPolicy).
LOG_RETENTION_DAYS = (
    1,
    3,
    5,
    7,
    14,
    30,
    60,
    90,
    120,
    150,
    180,
    365,
    400,
    545,
    731,
    1096,
    1827,
    2192,
    2557,
    2922,
    3288,
    3653,
)
SSM_PREFIX_PATTERN = re.compile(r"^(/[A-Za-z0-9_.-]+)+$")
TARGET_MODEL_PATTERN = re.compile(r"^([A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*)?$")
EMAIL_PATTERN = re.compile(r"^([^@\s]+@[^@\s]+\.[^@\s]+)?$")
#: "" or a relative folder: no leading/trailing "/", no segment starting with "." (so no "." or ".." and nothing
#: hidden), the characters docker-ignore rules and shells take literally. `\Z`, not `$`, so a trailing newline fails.
REPO_FOLDER_PATTERN = re.compile(r"^([A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*)?\Z")
REPO_FOLDER_MAX_LENGTH = 200

#: Where container/Dockerfile copies the stage's default tokenizer inside the image (`COPY ${DEFAULT_TOKENIZER}/`).
IMAGE_DEFAULT_TOKENIZER_DIR = "/opt/mme/default-tokenizer"
#: The largest capture record, in KiB (`capture_max_record_kb`): SageMaker's request and response limit is 6 MB.
CAPTURE_MAX_RECORD_KB = 6144
#: Seconds between the container's per-model metric lines (MME_METRICS_INTERVAL_SECONDS): CloudWatch's standard
#: resolution. Set explicitly so the dashboard can count loaded models (one `Loaded` per model per interval).
METRICS_INTERVAL_SECONDS = 60

#: Keys whose default differs per stage name (a stage called "prod" is protected and gated by default).
PROD_STAGE_DEFAULTS: dict[str, Any] = {"termination_protection": True, "require_approval": True}


#: Keys that once existed, and why they are gone: a cdk.json that still sets one fails with the reason, not with
#: "unknown key".
REMOVED_STAGE_KEYS = {
    "target_memory_utilization_percent": "memory is no scaling signal for a multi-model endpoint: it keeps models "
    "cached until memory runs out, so a memory policy scales out and never back in (SageMaker's multi-model caching "
    "guide); the endpoint scales on target_invocations_per_instance",
    "alarm_memory_utilization_percent": "high memory use is a multi-model endpoint's steady state, so the alarm fired "
    "all the time; trouble shows as model loading wait, evictions, cache misses, errors and latency, which alarm",
    "data_capture_percent": 'SageMaker refuses DataCapture on multi-model endpoints ("DataCapture feature is not '
    'supported with MultiModel mode"), so any value above 0 failed the deploy; the container captures requests '
    "itself: set capture_percent (and capture_model_percent per model) instead",
}


class SettingsError(ValueError):
    """A context value is unknown, malformed or conflicts with another; the message names the key."""


@dataclass(frozen=True, kw_only=True)
class StageSettings:
    """Everything that varies between deployment stages (dev, prod, ...). Field defaults are the documented defaults.

    Raises `SettingsError` from `__post_init__` when a value is out of range; the message names `stages.<name>.<key>`.
    """

    #: Stage name: lower-case, used in construct ids, stack names and the SSM parameter prefix.
    name: str
    #: Who owns a directly deployed stage ("" = the pipeline's shared stage); part of its stack and SSM names. Set
    #: from the app-level `owner` context, not per stage.
    owner: str = ""
    #: Target account and region; "" = the CLI's current credentials (CDK_DEFAULT_ACCOUNT / CDK_DEFAULT_REGION).
    account: str = ""
    region: str = ""
    #: CloudFormation termination protection on the endpoint stack (default True for a stage named "prod"). The
    #: model store stack is always protected: destroying it never saves money and orphans the retained bucket.
    termination_protection: bool = False
    #: Pipeline only: a manual approval before this stage deploys (default True for a stage named "prod").
    require_approval: bool = False

    # --- model store -------------------------------------------------------------------------------------------
    #: Key prefix that holds the model archives; TargetModel "x.tar.gz" is the object `<model_prefix>x.tar.gz`.
    model_prefix: str = "models/"
    #: Key prefix reserved for captured requests and responses (never readable as a model); the container writes
    #: there while capture is on (`capture_percent`). The default is where the `mme` capture readers look
    #: (handler/telemetry/names.py CAPTURE_PREFIX).
    capture_prefix: str = f"{CAPTURE_PREFIX}/"
    #: Days before captured request/response files expire (they are not models; they need no retention).
    capture_retention_days: int = 30

    # --- endpoint ----------------------------------------------------------------------------------------------
    #: Changing it deploys in one update: the variant is deregistered from autoscaling before the endpoint update
    #: and registered again after it (SageMaker refuses an instance-type change of an autoscaled variant).
    instance_type: str = "ml.m5.large"
    #: Instances when the endpoint is created. Updates keep the live count (RetainAllVariantProperties), which the
    #: autoscaler moves within [min_instance_count, max_instance_count]; changing this value alone changes nothing on
    #: a running endpoint (change min/max instead: a new range clamps the live count at once).
    initial_instance_count: int = 1
    min_instance_count: int = 1
    max_instance_count: int = 2
    #: EBS volume per instance in GB, encrypted with the store's key; 0 = the instance type has NVMe instance storage
    #: (ml.*d.*, g4dn, g5, ...), where SageMaker refuses both a volume size and a volume KMS key.
    volume_size_gb: int = 30
    model_download_timeout_seconds: int = 600
    startup_health_check_timeout_seconds: int = 600
    #: MultiModelConfig.ModelCacheSetting: "Disabled" only when every request uses a different model.
    model_cache: str = "Enabled"

    # --- autoscaling -------------------------------------------------------------------------------------------
    #: Target tracking on SageMakerVariantInvocationsPerInstance (invocations per instance per minute), the metric
    #: SageMaker's multi-model autoscaling guide recommends. Memory is no signal: an MME keeps models cached until
    #: memory runs out, so high memory use is its steady state.
    target_invocations_per_instance: int = 200
    scale_in_cooldown_seconds: int = 600
    scale_out_cooldown_seconds: int = 120

    # --- sleep -------------------------------------------------------------------------------------------------
    #: Put the endpoint to sleep when it has had no invocation for `idle_minutes` (an alarm starts a function that
    #: does what `mme sleep` does); `mme wake` or `mme invoke --wake` wakes it.
    auto_sleep: bool = False
    #: Minutes without an invocation before auto-sleep; a multiple of 5 from 5 to 1440 (CloudWatch evaluates alarms
    #: over at most a day).
    idle_minutes: int = 60
    #: Keep the endpoint awake on a schedule: EventBridge Scheduler expressions ("cron(...)" or "at(...)") for the
    #: wake and the sleep, e.g. "cron(0 8 ? * MON-FRI *)" and "cron(0 19 ? * MON-FRI *)", in `schedule_timezone`.
    #: Both or neither ("" = no schedule). Between a scheduled wake and the next scheduled sleep, idle auto-sleep
    #: leaves the endpoint alone.
    wake_schedule: str = ""
    sleep_schedule: str = ""
    #: IANA time zone of the schedule, e.g. "Europe/Berlin".
    schedule_timezone: str = "UTC"

    # --- container tunables (environment of the model container; see the container's README) -----------------
    #: "shared": one model host process holds TensorFlow and every model, so a model costs about its weights;
    #: "per-worker": each model's MMS worker holds its own TensorFlow runtime (~250 MB per model), the baseline.
    model_host: str = "shared"
    server_workers: int = 1
    max_payload_mb: int = 6
    response_timeout_seconds: int = 60
    tf_intra_op_threads: int = 0
    tf_inter_op_threads: int = 0
    jvm_heap: str = "1g"
    log_level: str = "INFO"
    max_texts_per_request: int = 64
    #: Per-worker mode: MiB that must be free, beyond twice a SavedModel's size, before a load; else 507 and SageMaker
    #: evicts (0 = off).
    load_memory_reserve_mb: int = 300
    #: Shared mode: MiB kept free under the container's limit at every load, for requests in flight; 0 = off.
    memory_headroom_mb: int = 512
    #: Shared mode: most texts per model call when concurrent requests for one model are batched (1 = off), and how
    #: long in milliseconds a batch waits for more (only while another worker of the model could still send).
    max_batch_size: int = 8
    max_batch_delay_ms: int = 0
    #: Shared mode: batches of one model that may run in the model at once (TensorFlow spreads them over the cores).
    parallel_batches: int = 2
    #: Shared mode: the most thin workers a busy model gets, and the seconds without a request after which it goes
    #: back to `server_workers`.
    max_workers_per_model: int = 4
    worker_idle_seconds: int = 60
    #: Folder relative to the repository root holding a tokenizer saved with transformers' `save_pretrained`
    #: (e.g. "tokenizers/bert-base-cased"), committed to git so the pipeline's build sees it. It is baked into the
    #: image at /opt/mme/default-tokenizer (the model runs with network isolation, so nothing can be fetched at
    #: start) and serves archives that ship no tokenizer (the original `0/`-only ones). "" = no default tokenizer:
    #: every archive must ship its own. Synth fails when the folder holds no tokenizer files.
    default_tokenizer: str = ""

    # --- request capture and per-model metrics (the container's; names in handler/telemetry/names.py) ---------
    #: Share of requests, 0 to 100, that the container writes (request, response, status, latency) as JSON Lines to
    #: s3://<model bucket>/<capture_prefix>, encrypted with the store's key. 0 = off (the default), unless a model
    #: has an override in `capture_model_percent`. SageMaker's own DataCapture refuses multi-model endpoints.
    capture_percent: float = 0.0
    #: Per-model shares overriding `capture_percent`: {TargetModel: percent}, e.g. {"sentiment.tar.gz": 100}. A share
    #: above 0 turns capture on for that model even when `capture_percent` is 0; 0 turns it off for that model.
    capture_model_percent: Mapping[str, float] = field(default_factory=dict)
    #: What a record keeps of the payloads: "both", "inputs" or "outputs".
    capture_content: str = "both"
    #: Most KiB per record; longer payloads are cut to fit and the record marked `truncated`.
    capture_max_record_kb: int = 256
    #: Per-model CloudWatch metrics (requests, errors, latency, loads, batch size; namespace MultiModelEndpoint/Models)
    #: as Embedded Metric Format log lines, with their dashboard widgets and error-rate alarm; false turns all off.
    model_metrics: bool = True

    # --- monitoring --------------------------------------------------------------------------------------------
    #: "" = no SNS topic; otherwise alarms notify a KMS-encrypted topic with this email subscribed.
    alarm_email: str = ""
    alarm_5xx_errors: int = 5
    #: ModelLoadingWaitTime p99 threshold, in seconds (the metric is in microseconds).
    alarm_model_loading_wait_seconds: int = 20
    #: Model unloads (ModelUnloadingTime sample count) per 5 minutes before the cache is considered thrashing.
    alarm_model_unloads: int = 20
    #: ModelCacheHit average below this percentage alarms.
    alarm_cache_hit_percent: int = 50
    #: ModelLatency p99 threshold, in milliseconds (the metric is in microseconds): time inside the container.
    alarm_model_latency_ms: int = 1000
    #: OverheadLatency p99 threshold, in milliseconds (the metric is in microseconds).
    alarm_overhead_latency_ms: int = 200
    #: Percent of a single model's requests failing (4xx or 5xx) over 5 minutes above which the worst model's error
    #: rate alarms (in 2 of 3 periods, like the other alarms; needs `model_metrics`).
    alarm_model_error_rate_percent: int = 5
    #: Days the endpoint's CloudWatch log group keeps events; the group is deleted with the endpoint stack.
    log_retention_days: int = 30

    # --- discovery and pipeline --------------------------------------------------------------------------------
    #: SSM parameter path prefix for endpoint name, bucket and prefix (read by the `mme` CLI); "" = /mme/<name>, or
    #: /mme/<owner>/<name> for a direct deploy.
    ssm_prefix: str = ""
    #: Pipeline only: TargetModel the post-deploy smoke test invokes; "" = no smoke test for this stage.
    smoke_test_target_model: str = "sentiment.tar.gz"

    def __post_init__(self) -> None:
        _validate_names(self)
        if not self.ssm_prefix:
            object.__setattr__(self, "ssm_prefix", self.names.ssm_prefix)
        _validate_stage(self)
        # JSON gives ints where floats are meant; one type keeps equality and the container environment stable.
        object.__setattr__(self, "capture_percent", float(self.capture_percent))
        shares = {model: float(share) for model, share in sorted(self.capture_model_percent.items())}
        object.__setattr__(self, "capture_model_percent", MappingProxyType(shares))

    @property
    def capture_enabled(self) -> bool:
        """True when the container captures any request: `capture_percent` or a per-model share is above 0."""
        return self.capture_percent > 0 or any(share > 0 for share in self.capture_model_percent.values())

    @property
    def names(self) -> StageNames:
        """Stack names and SSM prefix of this stage (shared with the `mme` CLI)."""
        return StageNames(stage=self.name, owner=self.owner)

    def container_environment(self) -> dict[str, str]:
        """Environment of the model container; names are the container's contract (handler/settings.py).

        Only what the stage settings decide: the capture destination and key, and the endpoint's name (the
        metrics' EndpointName dimension), are added where the endpoint is built (`MultiModelEndpoint`). The capture
        variables are set only when capture is on, so changing them while it is off redeploys nothing.
        """
        return {
            "MME_MODEL_HOST": self.model_host,
            "SAGEMAKER_MODEL_SERVER_WORKERS": str(self.server_workers),
            "SAGEMAKER_MAX_PAYLOAD_IN_MB": str(self.max_payload_mb),
            "MME_RESPONSE_TIMEOUT_SECONDS": str(self.response_timeout_seconds),
            "MME_TF_INTRA_OP_THREADS": str(self.tf_intra_op_threads),
            "MME_TF_INTER_OP_THREADS": str(self.tf_inter_op_threads),
            "MME_JVM_HEAP": self.jvm_heap,
            "MME_LOG_LEVEL": self.log_level,
            "MME_MAX_TEXTS_PER_REQUEST": str(self.max_texts_per_request),
            "MME_LOAD_MEMORY_RESERVE_MB": str(self.load_memory_reserve_mb),
            "MME_MEMORY_HEADROOM_MB": str(self.memory_headroom_mb),
            "MME_MAX_BATCH_SIZE": str(self.max_batch_size),
            "MME_MAX_BATCH_DELAY_MS": str(self.max_batch_delay_ms),
            "MME_PARALLEL_BATCHES": str(self.parallel_batches),
            "MME_MAX_WORKERS_PER_MODEL": str(self.max_workers_per_model),
            "MME_WORKER_IDLE_SECONDS": str(self.worker_idle_seconds),
            **({"MME_DEFAULT_TOKENIZER_DIR": IMAGE_DEFAULT_TOKENIZER_DIR} if self.default_tokenizer else {}),
            **self._capture_environment(),
            "MME_METRICS_ENABLED": "true" if self.model_metrics else "false",
            "MME_METRICS_NAMESPACE": METRICS_NAMESPACE,
            "MME_METRICS_INTERVAL_SECONDS": str(METRICS_INTERVAL_SECONDS),
        }

    def _capture_environment(self) -> dict[str, str]:
        if not self.capture_enabled:
            return {}
        return {
            # Always set while capture is on: the container's own default share is 100.
            "MME_CAPTURE_PERCENT": str(self.capture_percent),
            "MME_CAPTURE_MODEL_PERCENT": json.dumps(dict(self.capture_model_percent), sort_keys=True),
            "MME_CAPTURE_CONTENT": self.capture_content,
            "MME_CAPTURE_MAX_RECORD_BYTES": str(self.capture_max_record_kb * 1024),
        }


@dataclass(frozen=True, kw_only=True)
class PipelineSettings:
    """Where the pipeline reads the source. `enabled` is False when no repository/connection is configured, or when
    the stages are deployed directly on request (`direct`)."""

    repository: str = ""
    branch: str = "main"
    connection_arn: str = ""
    #: Deploy the stages directly (owner-prefixed) although a pipeline is configured.
    direct: bool = False

    @property
    def enabled(self) -> bool:
        """True when the app should synthesize the CDK Pipelines stack instead of the stages directly."""
        return bool(self.repository) and not self.direct


@dataclass(frozen=True, kw_only=True)
class AppSettings:
    """The whole app's configuration: the pipeline source and the stages in deployment order."""

    pipeline: PipelineSettings
    stages: tuple[StageSettings, ...] = field(default_factory=tuple)


_STAGE_FIELDS = {f.name: f for f in dataclasses.fields(StageSettings) if f.name not in ("name", "owner")}


def _fail(key: str, allowed: str, value: object) -> SettingsError:
    return SettingsError(f"context key {key!r}: got {value!r}; allowed: {allowed}")


def _check_int(stage: StageSettings, key: str, low: int, high: int) -> None:
    value = getattr(stage, key)
    # bool is an int subclass; `true` for a count is a typo, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(f"stages.{stage.name}.{key}", f"an integer from {low} to {high}", value)


def _check_match(stage: StageSettings, key: str, pattern: re.Pattern[str], allowed: str) -> None:
    value = getattr(stage, key)
    if not isinstance(value, str) or not pattern.match(value):
        raise _fail(f"stages.{stage.name}.{key}", allowed, value)


def _is_percent(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value) and 0 <= value <= 100


def _check_percent(stage: StageSettings, key: str) -> None:
    value = getattr(stage, key)
    if not _is_percent(value):
        raise _fail(f"stages.{stage.name}.{key}", "a number from 0 to 100", value)


def _check_model_percent(stage: StageSettings) -> None:
    key = f"stages.{stage.name}.capture_model_percent"
    shares = stage.capture_model_percent
    if not isinstance(shares, Mapping):
        raise _fail(key, 'an object of TargetModel -> percent, e.g. {"sentiment.tar.gz": 100}', shares)
    for model, share in shares.items():
        if not isinstance(model, str) or not model or not TARGET_MODEL_PATTERN.match(model):
            raise _fail(
                key, 'TargetModel names relative to model_prefix, e.g. "sentiment.tar.gz" (S3 key characters)', model
            )
        if not _is_percent(share):
            raise _fail(f"{key}[{model!r}]", "a number from 0 to 100", share)


def _check_choice(stage: StageSettings, key: str, choices: tuple[str, ...]) -> None:
    value = getattr(stage, key)
    if value not in choices:
        raise _fail(f"stages.{stage.name}.{key}", " | ".join(choices), value)


def _validate_names(s: StageSettings) -> None:
    if not isinstance(s.name, str) or not NAME_PATTERN.match(s.name):
        raise _fail("stages.<name>", "lower-case letters, digits and '-', starting with a letter, <= 20 chars", s.name)
    if not isinstance(s.owner, str) or (s.owner and not NAME_PATTERN.match(s.owner)):
        raise _fail("owner", "lower-case letters, digits and '-', starting with a letter, <= 20 chars", s.owner)


def _validate_stage(s: StageSettings) -> None:
    p = f"stages.{s.name}"
    _check_match(s, "account", ACCOUNT_PATTERN, '"" or a 12-digit account id')
    _check_match(s, "region", REGION_PATTERN, '"" or a region name such as "eu-west-1"')
    for key in ("termination_protection", "require_approval"):
        if not isinstance(getattr(s, key), bool):
            raise _fail(f"{p}.{key}", "true | false", getattr(s, key))
    _check_match(s, "model_prefix", PREFIX_PATTERN, 'an S3 key prefix ending in "/", no leading "/", e.g. "models/"')
    _check_match(s, "capture_prefix", PREFIX_PATTERN, 'an S3 key prefix ending in "/", e.g. "capture/"')
    if s.model_prefix.startswith(s.capture_prefix) or s.capture_prefix.startswith(s.model_prefix):
        raise SettingsError(
            f"context keys {p}.model_prefix ({s.model_prefix!r}) and {p}.capture_prefix ({s.capture_prefix!r}) "
            "overlap; allowed: two disjoint prefixes (captured data must never be readable as a model)"
        )
    _check_int(s, "capture_retention_days", 1, 3650)
    _check_match(
        s, "instance_type", INSTANCE_TYPE_PATTERN, 'a SageMaker instance type "ml.<family>.<size>", e.g. "ml.m5.large"'
    )
    _check_int(s, "initial_instance_count", 1, 100)
    _check_int(s, "min_instance_count", 1, 100)
    _check_int(s, "max_instance_count", 1, 100)
    if s.min_instance_count > s.max_instance_count:
        raise SettingsError(
            f"context keys {p}.min_instance_count ({s.min_instance_count}) > {p}.max_instance_count "
            f"({s.max_instance_count}); allowed: min_instance_count <= max_instance_count"
        )
    if not s.min_instance_count <= s.initial_instance_count <= s.max_instance_count:
        raise SettingsError(
            f"context key {p}.initial_instance_count: got {s.initial_instance_count}; allowed: an integer from "
            f"min_instance_count ({s.min_instance_count}) to max_instance_count ({s.max_instance_count})"
        )
    if s.volume_size_gb != 0:
        _check_int(s, "volume_size_gb", 1, 512)
    _check_int(s, "model_download_timeout_seconds", 60, 3600)
    _check_int(s, "startup_health_check_timeout_seconds", 60, 3600)
    _check_choice(s, "model_cache", MODEL_CACHE_SETTINGS)
    _check_choice(s, "model_host", MODEL_HOST_SETTINGS)
    _check_int(s, "target_invocations_per_instance", 1, 1_000_000)
    _check_int(s, "scale_in_cooldown_seconds", 0, 3600)
    _check_int(s, "scale_out_cooldown_seconds", 0, 3600)
    if not isinstance(s.auto_sleep, bool):
        raise _fail(f"{p}.auto_sleep", "true | false", s.auto_sleep)
    _check_int(s, "idle_minutes", 5, 1440)
    for key in ("wake_schedule", "sleep_schedule"):
        _check_match(
            s, key, SCHEDULE_PATTERN, '"" or an EventBridge Scheduler expression such as "cron(0 8 ? * MON-FRI *)"'
        )
    if bool(s.wake_schedule) != bool(s.sleep_schedule):
        raise SettingsError(
            f"context keys {p}.wake_schedule ({s.wake_schedule!r}) and {p}.sleep_schedule ({s.sleep_schedule!r}): "
            "allowed: both (a schedule that wakes and one that sleeps) or neither"
        )
    _check_match(s, "schedule_timezone", TIMEZONE_PATTERN, 'an IANA time zone such as "UTC" or "Europe/Berlin"')
    if s.idle_minutes % 5:
        raise _fail(f"{p}.idle_minutes", "a multiple of 5 from 5 to 1440", s.idle_minutes)
    _check_int(s, "server_workers", 1, 64)
    _check_int(s, "max_payload_mb", 1, 6)  # SageMaker's own request limit is 6 MB
    _check_int(s, "response_timeout_seconds", 1, 60)  # SageMaker stops waiting after 60 s
    _check_int(s, "tf_intra_op_threads", 0, 256)
    _check_int(s, "tf_inter_op_threads", 0, 256)
    _check_match(s, "jvm_heap", JVM_HEAP_PATTERN, 'a JVM size such as "512m" or "1g"')
    _check_choice(s, "log_level", LOG_LEVELS)
    _check_int(s, "max_texts_per_request", 1, 10_000)
    _check_int(s, "load_memory_reserve_mb", 0, 1_000_000)
    _check_int(s, "memory_headroom_mb", 0, 1_000_000)
    _check_int(s, "max_batch_size", 1, 1024)
    _check_int(s, "max_batch_delay_ms", 0, 10_000)
    _check_int(s, "parallel_batches", 1, 64)
    _check_int(s, "max_workers_per_model", 1, 64)
    _check_int(s, "worker_idle_seconds", 1, 86_400)
    if s.model_host == "shared" and s.max_workers_per_model < s.server_workers:
        raise SettingsError(
            f"context key stages.{s.name}.max_workers_per_model: got {s.max_workers_per_model}; allowed: at least "
            f"server_workers ({s.server_workers}), the workers a model starts with"
        )
    _check_match(
        s,
        "default_tokenizer",
        REPO_FOLDER_PATTERN,
        '"" or a folder relative to the repository root such as "tokenizers/bert-base-cased" (letters, digits, '
        '"_", "-", "."; no leading or trailing "/", no "." or ".." segments)',
    )
    if len(s.default_tokenizer) > REPO_FOLDER_MAX_LENGTH:
        raise _fail(f"{p}.default_tokenizer", f"at most {REPO_FOLDER_MAX_LENGTH} characters", s.default_tokenizer)
    _check_percent(s, "capture_percent")
    _check_model_percent(s)
    _check_choice(s, "capture_content", CAPTURE_CONTENTS)
    _check_int(s, "capture_max_record_kb", 1, CAPTURE_MAX_RECORD_KB)
    if not isinstance(s.model_metrics, bool):
        raise _fail(f"{p}.model_metrics", "true | false", s.model_metrics)
    _check_match(s, "alarm_email", EMAIL_PATTERN, '"" or an email address')
    _check_int(s, "alarm_5xx_errors", 1, 1_000_000)
    _check_int(s, "alarm_model_loading_wait_seconds", 1, 3600)
    _check_int(s, "alarm_model_unloads", 1, 1_000_000)
    _check_int(s, "alarm_cache_hit_percent", 1, 100)
    _check_int(s, "alarm_model_latency_ms", 1, 60_000)
    _check_int(s, "alarm_overhead_latency_ms", 1, 60_000)
    _check_int(s, "alarm_model_error_rate_percent", 1, 100)
    if s.log_retention_days not in LOG_RETENTION_DAYS:
        raise _fail(f"{p}.log_retention_days", " | ".join(map(str, LOG_RETENTION_DAYS)), s.log_retention_days)
    _check_match(s, "ssm_prefix", SSM_PREFIX_PATTERN, 'an SSM path such as "/mme/dev" (no trailing "/")')
    _check_match(
        s,
        "smoke_test_target_model",
        TARGET_MODEL_PATTERN,
        '"" or a key relative to model_prefix, e.g. "sentiment.tar.gz"',
    )


def _stage_from_context(name: str, raw: object, *, owner: str) -> StageSettings:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise _fail(f"stages.{name}", "an object of stage settings", raw)
    removed = sorted(set(raw) & set(REMOVED_STAGE_KEYS))
    if removed:
        raise SettingsError(
            f"context key 'stages.{name}.{removed[0]}' is no longer a setting: {REMOVED_STAGE_KEYS[removed[0]]}; "
            "remove it from cdk.json"
        )
    unknown = sorted(set(raw) - set(_STAGE_FIELDS))
    if unknown:
        raise _fail(f"stages.{name}.{unknown[0]}", "one of " + ", ".join(sorted(_STAGE_FIELDS)), "unknown key")
    values: dict[str, Any] = {}
    if name == "prod":
        values.update(PROD_STAGE_DEFAULTS)
    values.update(raw)
    for key, value in values.items():
        default = _STAGE_FIELDS[key].default
        # `-c` values and hand-edited JSON both arrive here; keep the types strict so typos fail loudly.
        if isinstance(default, bool) and not isinstance(value, bool):
            raise _fail(f"stages.{name}.{key}", "true | false", value)
        if (
            isinstance(default, int)
            and not isinstance(default, bool)
            and (isinstance(value, bool) or not isinstance(value, int))
        ):
            raise _fail(f"stages.{name}.{key}", "an integer", value)
        if isinstance(default, str) and not isinstance(value, str):
            raise _fail(f"stages.{name}.{key}", "a string", value)
    return StageSettings(name=name, owner=owner, **values)


def load_app_settings(context: Mapping[str, Any], *, user_name: str = "") -> AppSettings:
    """Build and validate the app's settings from the CDK context (the `context` of cdk.json plus `-c` values).

    Only the keys `repository`, `branch`, `connection_arn`, `direct`, `owner` and `stages` are ours; keys containing
    ":" (feature flags, `aws-cdk:*`, `@aws-cdk/*`) are the CDK's and ignored. `stages` may be a JSON string (from
    `-c`). `user_name` (the OS user, read by app.py) is the default `owner` of direct deploys.
    Raises `SettingsError` naming the key and the allowed values.
    """
    repository = context.get("repository", "") or ""
    branch = context.get("branch", "main") or "main"
    connection_arn = context.get("connection_arn", "") or ""
    for key, value in (("repository", repository), ("branch", branch), ("connection_arn", connection_arn)):
        if not isinstance(value, str):
            raise _fail(key, "a string", value)
    if repository and not REPOSITORY_PATTERN.match(repository):
        raise _fail("repository", '"" (no pipeline) or "owner/name" as the connection provider spells it', repository)
    if repository and not CONNECTION_ARN_PATTERN.match(connection_arn):
        raise _fail(
            "connection_arn",
            "the ARN of an AVAILABLE CodeStar/CodeConnections connection "
            "(arn:aws:codeconnections:<region>:<account>:connection/<id>) when 'repository' is set",
            connection_arn,
        )
    if connection_arn and not repository:
        raise _fail("repository", '"owner/name" when connection_arn is set', repository)
    direct = context.get("direct", False)
    # `-c direct=true` arrives as the string "true".
    if direct in ("true", "false"):
        direct = direct == "true"
    if not isinstance(direct, bool):
        raise _fail("direct", "true | false", direct)
    pipeline = PipelineSettings(repository=repository, branch=branch, connection_arn=connection_arn, direct=direct)
    owner = _owner(context, user_name=user_name, pipeline=pipeline)

    raw_stages = context.get("stages", {"dev": {}})
    if isinstance(raw_stages, str):
        try:
            raw_stages = json.loads(raw_stages)
        except json.JSONDecodeError as exc:
            raise _fail("stages", f"a JSON object of stage name -> settings ({exc.msg})", raw_stages) from exc
    if not isinstance(raw_stages, Mapping) or not raw_stages:
        raise _fail("stages", 'a non-empty object such as {"dev": {}, "prod": {}}', raw_stages)
    stages = tuple(_stage_from_context(name, raw, owner=owner) for name, raw in raw_stages.items())
    return AppSettings(pipeline=pipeline, stages=stages)


def _owner(context: Mapping[str, Any], *, user_name: str, pipeline: PipelineSettings) -> str:
    """The owner of directly deployed stages ("" for the pipeline's): `owner` from the context, else made from the
    OS user name. Refuses an `owner` that would be ignored, and direct mode without any owner."""
    owner = context.get("owner", "")
    if not isinstance(owner, str):
        raise _fail("owner", "a string", owner)
    if pipeline.enabled:
        if owner:
            raise _fail(
                "owner",
                '"" while the pipeline deploys the stages; add `-c direct=true` to deploy stages of your own',
                owner,
            )
        return ""
    owner = owner or owner_from_user_name(user_name)
    if not owner:
        raise _fail(
            "owner",
            "the owner of directly deployed stacks (their names start Mme-<owner>-<stage>); none could be made from "
            "the OS user name, so pass one: `npx cdk deploy -c owner=<your-name> ...`",
            owner,
        )
    if not NAME_PATTERN.match(owner):
        raise _fail("owner", "lower-case letters, digits and '-', starting with a letter, <= 20 chars", owner)
    return owner


__all__ = [
    "AppSettings",
    "PipelineSettings",
    "SettingsError",
    "StageSettings",
    "load_app_settings",
]
