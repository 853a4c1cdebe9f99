"""Container settings: every tunable from the environment, with its documented default, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from handler.serve import mms_environment
from handler.settings import ServingSettings, SettingsError


def test_defaults_match_sagemaker() -> None:
    settings = ServingSettings.from_env({})
    assert settings.port == 8080
    assert settings.max_payload_mb == 6
    assert settings.response_timeout_seconds == 60
    assert settings.workers_per_model == 1
    assert settings.mms_config_file == Path("/etc/sagemaker-mms.properties")
    assert (settings.max_workers_per_model, settings.worker_idle_seconds) == (4, 60)
    assert settings.worker_scale_interval_seconds == 1
    assert settings.load_memory_reserve_mb == 300
    assert settings.memory_headroom_mb == 512


def test_batching_is_on_by_default_with_a_small_batch_and_delay() -> None:
    settings = ServingSettings.from_env({})
    assert (settings.max_batch_size, settings.max_batch_delay_ms, settings.parallel_batches) == (8, 0, 2)


def test_every_tunable_is_read_from_its_variable() -> None:
    settings = ServingSettings.from_env(
        {
            "SAGEMAKER_BIND_TO_PORT": "9001",
            "MME_BIND_HOST": "127.0.0.1",
            "SAGEMAKER_MODEL_SERVER_WORKERS": "2",
            "MME_RESPONSE_TIMEOUT_SECONDS": "30",
            "SAGEMAKER_MAX_PAYLOAD_IN_MB": "3",
            "MME_TF_INTRA_OP_THREADS": "1",
            "MME_TF_INTER_OP_THREADS": "1",
            "MME_JVM_HEAP": "512m",
            "MME_LOG_LEVEL": "debug",
            "MME_MAX_TEXTS_PER_REQUEST": "5",
            "MME_LOAD_MEMORY_RESERVE_MB": "200",
            "MME_MEMORY_HEADROOM_MB": "1024",
            "MME_DEFAULT_TOKENIZER_DIR": "/opt/tokenizer",
            "MME_MMS_CONFIG_FILE": "/tmp/x/mms.properties",
            "MME_RUN_DIR": "/tmp/x",
            "MME_MODEL_HOST": "Shared",
            "MME_MODEL_HOST_START_TIMEOUT_SECONDS": "20",
            "MME_MAX_BATCH_SIZE": "1",
            "MME_MAX_BATCH_DELAY_MS": "3",
            "MME_PARALLEL_BATCHES": "3",
            "MME_MAX_WORKERS_PER_MODEL": "6",
            "MME_WORKER_IDLE_SECONDS": "30",
            "MME_WORKER_SCALE_INTERVAL_SECONDS": "2",
        }
    )
    assert settings == ServingSettings(
        port=9001,
        bind_host="127.0.0.1",
        workers_per_model=2,
        response_timeout_seconds=30,
        max_payload_mb=3,
        tf_intra_op_threads=1,
        tf_inter_op_threads=1,
        jvm_heap="512m",
        log_level="DEBUG",
        max_texts_per_request=5,
        load_memory_reserve_mb=200,
        memory_headroom_mb=1024,
        default_tokenizer_dir=Path("/opt/tokenizer"),
        mms_config_file=Path("/tmp/x/mms.properties"),
        run_dir=Path("/tmp/x"),
        model_host="shared",
        model_host_start_timeout_seconds=20,
        max_batch_size=1,
        max_batch_delay_ms=3,
        parallel_batches=3,
        max_workers_per_model=6,
        worker_idle_seconds=30,
        worker_scale_interval_seconds=2,
    )


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("SAGEMAKER_BIND_TO_PORT", "http", "SAGEMAKER_BIND_TO_PORT='http' is not an integer"),
        ("SAGEMAKER_MODEL_SERVER_WORKERS", "0", "SAGEMAKER_MODEL_SERVER_WORKERS=0 must be >= 1"),
        ("MME_JVM_HEAP", "lots", "MME_JVM_HEAP='lots' must look like 512m or 2g"),
        ("MME_LOG_LEVEL", "loud", "MME_LOG_LEVEL='LOUD' must be one of"),
        ("MME_MODEL_HOST", "pooled", "MME_MODEL_HOST='pooled' must be one of per-worker, shared"),
        ("MME_MAX_BATCH_SIZE", "0", "MME_MAX_BATCH_SIZE=0 must be >= 1"),
        ("MME_MAX_BATCH_SIZE", "many", "MME_MAX_BATCH_SIZE='many' is not an integer"),
        ("MME_MAX_BATCH_DELAY_MS", "-1", "MME_MAX_BATCH_DELAY_MS=-1 must be >= 0"),
        ("MME_PARALLEL_BATCHES", "0", "MME_PARALLEL_BATCHES=0 must be >= 1"),
        ("MME_MAX_WORKERS_PER_MODEL", "0", "MME_MAX_WORKERS_PER_MODEL=0 must be >= 1"),
        ("MME_WORKER_IDLE_SECONDS", "soon", "MME_WORKER_IDLE_SECONDS='soon' is not an integer"),
        ("MME_WORKER_SCALE_INTERVAL_SECONDS", "0", "MME_WORKER_SCALE_INTERVAL_SECONDS=0 must be >= 1"),
        ("MME_MEMORY_HEADROOM_MB", "-1", "MME_MEMORY_HEADROOM_MB=-1 must be >= 0"),
        ("MME_MEMORY_HEADROOM_MB", "1g", "MME_MEMORY_HEADROOM_MB='1g' is not an integer"),
    ],
)
def test_malformed_variable_is_named_in_the_error(name: str, value: str, fragment: str) -> None:
    with pytest.raises(SettingsError) as caught:
        ServingSettings.from_env({name: value})
    assert fragment in str(caught.value)


def test_shared_mode_refuses_fewer_maximum_workers_than_every_model_starts_with() -> None:
    env = {"SAGEMAKER_MODEL_SERVER_WORKERS": "3", "MME_MAX_WORKERS_PER_MODEL": "2"}
    with pytest.raises(SettingsError, match="MME_MAX_WORKERS_PER_MODEL=2 must be >= SAGEMAKER_MODEL_SERVER_WORKERS=3"):
        ServingSettings.from_env({**env, "MME_MODEL_HOST": "shared"})
    # Per-worker mode never scales: the maximum means nothing there.
    assert ServingSettings.from_env({**env, "MME_MODEL_HOST": "per-worker"}).workers_per_model == 3


def test_run_dir_too_long_for_worker_sockets_is_refused_with_the_limit() -> None:
    with pytest.raises(SettingsError, match=r"MME_RUN_DIR=.* is too long: .* at most 87 characters"):
        ServingSettings.from_env({"MME_RUN_DIR": "/tmp/" + "x" * 90})
    assert ServingSettings.from_env({"MME_RUN_DIR": "/tmp/" + "x" * 82}).run_dir.name == "x" * 82


def test_mms_environment_redirects_every_path_and_timeout_in_seconds(tmp_path: Path) -> None:
    settings = ServingSettings(run_dir=tmp_path, port=9100, bind_host="127.0.0.1", response_timeout_seconds=42)
    env = mms_environment(settings)
    assert env["SAGEMAKER_MULTI_MODEL"] == "true"
    assert env["SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS"] == "42"
    assert env["MMS_INFERENCE_ADDRESS"] == env["MMS_MANAGEMENT_ADDRESS"] == "http://127.0.0.1:9100"
    assert f"-Djava.io.tmpdir={tmp_path}/tmp" in env["SAGEMAKER_MODEL_SERVER_VMARGS"]
    assert "-XX:-UsePerfData" in env["SAGEMAKER_MODEL_SERVER_VMARGS"]
    assert env["TMPDIR"] == str(tmp_path / "tmp")
    assert env["LOG_LOCATION"] == str(tmp_path / "logs")


def test_shared_mode_is_the_default_and_gives_mms_the_thin_handler(tmp_path: Path) -> None:
    assert ServingSettings.from_env({}).model_host == "shared"
    assert mms_environment(ServingSettings(run_dir=tmp_path))["SAGEMAKER_HANDLER"] == "handler.thin_service:handle"
    per_worker = ServingSettings(run_dir=tmp_path, model_host="per-worker")
    assert mms_environment(per_worker)["SAGEMAKER_HANDLER"] == "handler.service:handle"


def test_what_a_load_keeps_free_and_the_copies_of_a_model_follow_the_model_host_mode() -> None:
    env = {"MME_LOAD_MEMORY_RESERVE_MB": "300", "MME_MEMORY_HEADROOM_MB": "700", "SAGEMAKER_MODEL_SERVER_WORKERS": "3"}
    shared = ServingSettings.from_env({**env, "MME_MODEL_HOST": "shared"})
    assert (shared.memory_kept_free_mb, shared.runtimes_per_model) == (700, 1)
    per_worker = ServingSettings.from_env({**env, "MME_MODEL_HOST": "per-worker"})
    assert (per_worker.memory_kept_free_mb, per_worker.runtimes_per_model) == (300, 3)
