"""Stage settings: documented defaults, and bad context values fail with the key and the allowed values."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from stacks.settings import SettingsError, StageSettings, load_app_settings

ARN = "arn:aws:codeconnections:eu-west-1:111111111111:connection/abc-123"


def _load(context: dict[str, object]) -> Any:
    """The settings as `cdk` run by the OS user "alice" would build them."""
    return load_app_settings(context, user_name="alice")


def test_defaults_without_context_give_one_dev_stage_and_no_pipeline() -> None:
    settings = _load({})
    assert not settings.pipeline.enabled
    assert [s.name for s in settings.stages] == ["dev"]
    dev = settings.stages[0]
    assert dev.instance_type == "ml.m5.large"
    assert dev.model_prefix == "models/"
    assert dev.owner == "alice"
    assert dev.ssm_prefix == "/mme/alice/dev"
    assert dev.names.stack_name("Endpoint") == "Mme-alice-dev-Endpoint"
    assert not dev.termination_protection


def test_prod_stage_is_protected_and_gated_by_default() -> None:
    prod = _load({"stages": {"prod": {}}}).stages[0]
    assert prod.termination_protection
    assert prod.require_approval


def test_stage_order_follows_context_and_accepts_a_json_string() -> None:
    settings = _load({"stages": '{"qa": {}, "dev": {"max_instance_count": 3}}'})
    assert [s.name for s in settings.stages] == ["qa", "dev"]
    assert settings.stages[1].max_instance_count == 3


def test_settings_are_frozen() -> None:
    dev = _load({}).stages[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        dev.instance_type = "ml.c5.large"  # type: ignore[misc]


def test_container_environment_carries_every_tunable() -> None:
    env = StageSettings(name="dev", jvm_heap="2g", log_level="DEBUG", server_workers=2).container_environment()
    assert env == {
        "MME_MODEL_HOST": "shared",
        "SAGEMAKER_MODEL_SERVER_WORKERS": "2",
        "SAGEMAKER_MAX_PAYLOAD_IN_MB": "6",
        "MME_RESPONSE_TIMEOUT_SECONDS": "60",
        "MME_TF_INTRA_OP_THREADS": "0",
        "MME_TF_INTER_OP_THREADS": "0",
        "MME_JVM_HEAP": "2g",
        "MME_LOG_LEVEL": "DEBUG",
        "MME_MAX_TEXTS_PER_REQUEST": "64",
        "MME_LOAD_MEMORY_RESERVE_MB": "300",
        "MME_MEMORY_HEADROOM_MB": "512",
        "MME_MAX_BATCH_SIZE": "8",
        "MME_MAX_BATCH_DELAY_MS": "0",
        "MME_PARALLEL_BATCHES": "2",
        "MME_MAX_WORKERS_PER_MODEL": "4",
        "MME_WORKER_IDLE_SECONDS": "60",
        "MME_METRICS_ENABLED": "true",
        "MME_METRICS_NAMESPACE": "MultiModelEndpoint/Models",
        "MME_METRICS_INTERVAL_SECONDS": "60",
    }


def test_capture_is_off_and_model_metrics_on_by_default() -> None:
    stage = _load({}).stages[0]
    assert stage.capture_percent == 0
    assert dict(stage.capture_model_percent) == {}
    assert stage.capture_content == "both"
    assert stage.capture_max_record_kb == 256
    assert stage.model_metrics
    assert stage.alarm_model_error_rate_percent == 5
    assert not stage.capture_enabled
    env = stage.container_environment()
    assert not [name for name in env if name.startswith("MME_CAPTURE_")]
    assert env["MME_METRICS_ENABLED"] == "true"


def test_capture_settings_reach_the_container_environment() -> None:
    stage = _load(
        {
            "stages": {
                "dev": {
                    "capture_percent": 12.5,
                    "capture_model_percent": {"topic.tar.gz": 0, "sentiment.tar.gz": 100},
                    "capture_content": "inputs",
                    "capture_max_record_kb": 64,
                }
            }
        }
    ).stages[0]
    env = stage.container_environment()
    assert {name: value for name, value in env.items() if name.startswith("MME_CAPTURE_")} == {
        "MME_CAPTURE_PERCENT": "12.5",
        "MME_CAPTURE_MODEL_PERCENT": '{"sentiment.tar.gz": 100.0, "topic.tar.gz": 0.0}',
        "MME_CAPTURE_CONTENT": "inputs",
        "MME_CAPTURE_MAX_RECORD_BYTES": str(64 * 1024),
    }


def test_a_model_override_turns_capture_on_although_the_stage_share_is_zero() -> None:
    stage = _load({"stages": {"dev": {"capture_model_percent": {"models-v2/sentiment.tar.gz": 5}}}}).stages[0]
    assert stage.capture_percent == 0
    assert stage.capture_enabled
    env = stage.container_environment()
    # Set although 0: the container's own default share is 100.
    assert env["MME_CAPTURE_PERCENT"] == "0.0"
    assert env["MME_CAPTURE_MODEL_PERCENT"] == '{"models-v2/sentiment.tar.gz": 5.0}'


def test_overrides_of_zero_alone_leave_capture_off() -> None:
    stage = _load({"stages": {"dev": {"capture_model_percent": {"sentiment.tar.gz": 0}}}}).stages[0]
    assert not stage.capture_enabled
    assert "MME_CAPTURE_PERCENT" not in stage.container_environment()


def test_capture_shares_are_floats_and_read_only() -> None:
    stage = _load({"stages": {"dev": {"capture_percent": 10, "capture_model_percent": {"a.tar.gz": 1}}}}).stages[0]
    assert isinstance(stage.capture_percent, float)
    assert stage.capture_model_percent == {"a.tar.gz": 1.0}
    with pytest.raises(TypeError):
        stage.capture_model_percent["b.tar.gz"] = 5  # type: ignore[index]


def test_model_metrics_off_tells_the_container() -> None:
    stage = _load({"stages": {"dev": {"model_metrics": False}}}).stages[0]
    assert stage.container_environment()["MME_METRICS_ENABLED"] == "false"


@pytest.mark.parametrize("folder", ["tokenizers/bert-base-cased", "bert_base.v2", "a/b-c/d.e_f"])
def test_default_tokenizer_is_a_relative_folder_and_announced_to_the_container(folder: str) -> None:
    stage = _load({"stages": {"dev": {"default_tokenizer": folder}}}).stages[0]
    assert stage.default_tokenizer == folder
    assert stage.container_environment()["MME_DEFAULT_TOKENIZER_DIR"] == "/opt/mme/default-tokenizer"


def test_no_default_tokenizer_by_default() -> None:
    stage = _load({}).stages[0]
    assert stage.default_tokenizer == ""
    assert "MME_DEFAULT_TOKENIZER_DIR" not in stage.container_environment()


@pytest.mark.parametrize(
    ("stage", "fragments"),
    [
        ({"instance_typ": "ml.m5.large"}, ["stages.dev.instance_typ", "instance_type"]),
        ({"instance_type": "m5.large"}, ["stages.dev.instance_type", "ml.<family>.<size>"]),
        ({"max_batch_size": 0}, ["stages.dev.max_batch_size", "from 1"]),
        ({"server_workers": 3, "max_workers_per_model": 2}, ["stages.dev.max_workers_per_model", "server_workers (3)"]),
        ({"instance_type": "ml.m5.huge"}, ["stages.dev.instance_type", "ml.m5.large"]),
        ({"min_instance_count": 3, "max_instance_count": 2}, ["min_instance_count", "max_instance_count", "<="]),
        ({"initial_instance_count": 5}, ["stages.dev.initial_instance_count", "from min_instance_count"]),
        ({"model_cache": "yes"}, ["stages.dev.model_cache", "Enabled | Disabled"]),
        ({"log_level": "verbose"}, ["stages.dev.log_level", "INFO"]),
        ({"max_payload_mb": 7}, ["stages.dev.max_payload_mb", "from 1 to 6"]),
        ({"max_instance_count": True}, ["stages.dev.max_instance_count", "an integer"]),
        ({"termination_protection": "yes"}, ["stages.dev.termination_protection", "true | false"]),
        ({"model_prefix": "/models"}, ["stages.dev.model_prefix", 'ending in "/"']),
        ({"model_prefix": "data/", "capture_prefix": "data/capture/"}, ["model_prefix", "capture_prefix", "overlap"]),
        ({"jvm_heap": "lots"}, ["stages.dev.jvm_heap", "1g"]),
        ({"alarm_email": "not-an-address"}, ["stages.dev.alarm_email", "email"]),
        ({"default_tokenizer": "/opt/tokenizers/bert"}, ["stages.dev.default_tokenizer", "no leading"]),
        ({"default_tokenizer": "../tokenizers/bert"}, ["stages.dev.default_tokenizer", '".." segments']),
        ({"default_tokenizer": "tokenizers/../../bert"}, ["stages.dev.default_tokenizer", "relative to the repo"]),
        ({"default_tokenizer": "tokenizers/bert/"}, ["stages.dev.default_tokenizer", 'trailing "/"']),
        ({"default_tokenizer": "tokenizers//bert"}, ["stages.dev.default_tokenizer", "tokenizers/bert-base-cased"]),
        ({"default_tokenizer": "./tokenizers/bert"}, ["stages.dev.default_tokenizer", '"." or ".."']),
        ({"default_tokenizer": "tokenizers/bert base"}, ["stages.dev.default_tokenizer", "letters, digits"]),
        ({"default_tokenizer": "tokenizers/bert\n"}, ["stages.dev.default_tokenizer"]),
        ({"default_tokenizer": "t/" * 101 + "x"}, ["stages.dev.default_tokenizer", "at most 200 characters"]),
        ({"default_tokenizer": True}, ["stages.dev.default_tokenizer", "a string"]),
        ({"capture_percent": 101}, ["stages.dev.capture_percent", "from 0 to 100"]),
        ({"capture_percent": -1}, ["stages.dev.capture_percent", "from 0 to 100"]),
        ({"capture_percent": "10"}, ["stages.dev.capture_percent", "a number"]),
        ({"capture_percent": True}, ["stages.dev.capture_percent", "a number"]),
        ({"capture_model_percent": {"sentiment model": 5}}, ["stages.dev.capture_model_percent", "sentiment model"]),
        ({"capture_model_percent": {"": 5}}, ["stages.dev.capture_model_percent", "TargetModel"]),
        ({"capture_model_percent": {"a.tar.gz": 150}}, ["stages.dev.capture_model_percent['a.tar.gz']", "0 to 100"]),
        ({"capture_model_percent": {"a.tar.gz": "5"}}, ["stages.dev.capture_model_percent['a.tar.gz']", "number"]),
        ({"capture_model_percent": ["a.tar.gz"]}, ["stages.dev.capture_model_percent", "an object"]),
        ({"capture_content": "all"}, ["stages.dev.capture_content", "both | inputs | outputs"]),
        ({"capture_max_record_kb": 0}, ["stages.dev.capture_max_record_kb", "from 1 to 6144"]),
        ({"capture_max_record_kb": 6145}, ["stages.dev.capture_max_record_kb", "from 1 to 6144"]),
        ({"model_metrics": "false"}, ["stages.dev.model_metrics", "true | false"]),
        ({"alarm_model_error_rate_percent": 0}, ["stages.dev.alarm_model_error_rate_percent", "from 1 to 100"]),
        ({"alarm_model_error_rate_percent": 101}, ["stages.dev.alarm_model_error_rate_percent", "from 1 to 100"]),
        ({"log_retention_days": 10}, ["stages.dev.log_retention_days", "14 | 30"]),
        ({"idle_minutes": 7}, ["stages.dev.idle_minutes", "a multiple of 5"]),
        ({"idle_minutes": 2000}, ["stages.dev.idle_minutes", "from 5 to 1440"]),
        ({"auto_sleep": "yes"}, ["stages.dev.auto_sleep", "true | false"]),
        ({"wake_schedule": "cron(0 8 ? * MON-FRI *)"}, ["wake_schedule", "sleep_schedule", "both"]),
        ({"wake_schedule": "8am", "sleep_schedule": "7pm"}, ["stages.dev.wake_schedule", "cron(0 8"]),
        (
            {"wake_schedule": "cron(0 8 * * ? *)", "sleep_schedule": "cron(0 9 * * ? *)", "schedule_timezone": "CET;"},
            ["stages.dev.schedule_timezone", "Europe/Berlin"],
        ),
    ],
)
def test_bad_stage_value_names_key_and_allowed_values(stage: dict[str, object], fragments: list[str]) -> None:
    with pytest.raises(SettingsError) as raised:
        _load({"stages": {"dev": stage}})
    for fragment in fragments:
        assert fragment in str(raised.value)


@pytest.mark.parametrize(
    ("context", "fragments"),
    [
        ({"repository": "acme/mme"}, ["connection_arn", "arn:aws:codeconnections"]),
        ({"repository": "acme/mme", "connection_arn": "arn:aws:s3:::bucket"}, ["connection_arn"]),
        ({"connection_arn": ARN}, ["repository", "owner/name"]),
        ({"repository": "not a repo", "connection_arn": ARN}, ["repository", "owner/name"]),
        ({"stages": {}}, ["stages", "non-empty"]),
        ({"stages": "{not json"}, ["stages", "JSON"]),
        ({"stages": {"Dev": {}}}, ["stages.<name>", "lower-case"]),
    ],
)
def test_bad_app_value_names_key_and_allowed_values(context: dict[str, object], fragments: list[str]) -> None:
    with pytest.raises(SettingsError) as raised:
        _load(context)
    for fragment in fragments:
        assert fragment in str(raised.value)


def test_pipeline_enabled_with_repository_and_connection() -> None:
    settings = _load({"repository": "acme/mme", "connection_arn": ARN, "branch": "release"})
    assert settings.pipeline.enabled
    assert settings.pipeline.branch == "release"


def test_pipeline_stages_have_no_owner_and_shared_names() -> None:
    (dev,) = _load({"repository": "acme/mme", "connection_arn": ARN}).stages
    assert dev.owner == ""
    assert dev.ssm_prefix == "/mme/dev"
    assert dev.names.stack_name("ModelStore") == "Mme-dev-ModelStore"


@pytest.mark.parametrize(
    ("context", "user", "owner"),
    [
        ({}, "Alice.Smith", "alice-smith"),
        ({"owner": "bob"}, "alice", "bob"),
        ({"repository": "acme/mme", "connection_arn": ARN, "direct": "true"}, "carol", "carol"),
        ({"repository": "acme/mme", "connection_arn": ARN, "direct": True, "owner": "dan"}, "", "dan"),
    ],
)
def test_direct_deploys_are_named_after_their_owner(context: dict[str, object], user: str, owner: str) -> None:
    settings = load_app_settings(context, user_name=user)
    assert not settings.pipeline.enabled
    (dev,) = settings.stages
    assert dev.owner == owner
    assert dev.names.stack_name("Endpoint") == f"Mme-{owner}-dev-Endpoint"
    assert dev.ssm_prefix == f"/mme/{owner}/dev"


@pytest.mark.parametrize(
    ("context", "user", "fragments"),
    [
        ({}, "", ["owner", "-c owner=<your-name>"]),
        ({}, "42", ["owner", "-c owner=<your-name>"]),
        ({"owner": "Bob Smith"}, "alice", ["owner", "lower-case"]),
        ({"repository": "acme/mme", "connection_arn": ARN, "owner": "bob"}, "alice", ["owner", "-c direct=true"]),
        ({"direct": "maybe"}, "alice", ["direct", "true | false"]),
    ],
)
def test_bad_owner_or_direct_is_refused(context: dict[str, object], user: str, fragments: list[str]) -> None:
    with pytest.raises(SettingsError) as raised:
        load_app_settings(context, user_name=user)
    for fragment in fragments:
        assert fragment in str(raised.value)


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("target_memory_utilization_percent", "target_invocations_per_instance"),
        ("alarm_memory_utilization_percent", "steady state"),
        ("data_capture_percent", "DataCapture"),
        ("data_capture_percent", "set capture_percent"),
    ],
)
def test_removed_keys_fail_with_the_reason(key: str, reason: str) -> None:
    with pytest.raises(SettingsError) as raised:
        _load({"stages": {"dev": {key: 50}}})
    assert f"stages.dev.{key}" in str(raised.value)
    assert reason in str(raised.value)
    assert "remove it from cdk.json" in str(raised.value)
