"""The CDK app and the serving container agree on the container's environment variables and image layout."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from cdk_synth import REPO_ROOT

from handler.errors import ModelLoadError
from handler.model import find_tokenizer
from handler.settings import MODEL_HOST_MODES, ServingSettings
from handler.telemetry.names import METRICS_NAMESPACE
from stacks.multi_model_endpoint import DEFAULT_TOKENIZER_BUILD_ARG, TOKENIZER_FILES, check_default_tokenizer
from stacks.settings import (
    IMAGE_DEFAULT_TOKENIZER_DIR,
    METRICS_INTERVAL_SECONDS,
    MODEL_HOST_SETTINGS,
    SettingsError,
    StageSettings,
    load_app_settings,
)

DOCKERFILE = REPO_ROOT / "container" / "Dockerfile"


def test_every_container_setting_from_cdk_context_reaches_the_serving_settings() -> None:
    custom = {
        "model_host": "per-worker",
        "server_workers": 2,
        "max_payload_mb": 5,
        "response_timeout_seconds": 45,
        "tf_intra_op_threads": 2,
        "tf_inter_op_threads": 1,
        "jvm_heap": "768m",
        "log_level": "DEBUG",
        "max_texts_per_request": 16,
        "load_memory_reserve_mb": 512,
        "memory_headroom_mb": 256,
        "max_batch_size": 4,
        "max_batch_delay_ms": 2,
        "parallel_batches": 3,
        "max_workers_per_model": 3,
        "worker_idle_seconds": 30,
    }
    stage = load_app_settings({"stages": {"dev": custom}}, user_name="alice").stages[0]
    serving = ServingSettings.from_env(stage.container_environment())
    assert (
        serving.model_host,
        serving.workers_per_model,
        serving.max_payload_mb,
        serving.response_timeout_seconds,
        serving.tf_intra_op_threads,
        serving.tf_inter_op_threads,
        serving.jvm_heap,
        serving.log_level,
        serving.max_texts_per_request,
        serving.load_memory_reserve_mb,
        serving.memory_headroom_mb,
        serving.max_batch_size,
        serving.max_batch_delay_ms,
        serving.parallel_batches,
        serving.max_workers_per_model,
        serving.worker_idle_seconds,
    ) == tuple(custom.values())


def test_capture_and_metrics_settings_from_cdk_context_reach_the_serving_settings() -> None:
    custom = {
        "capture_percent": 12.5,
        "capture_model_percent": {"sentiment.tar.gz": 100, "topic.tar.gz": 0},
        "capture_content": "outputs",
        "capture_max_record_kb": 64,
        "model_metrics": False,
    }
    stage = load_app_settings({"stages": {"dev": custom}}, user_name="alice").stages[0]
    serving = ServingSettings.from_env(stage.container_environment())
    assert serving.capture_percent == 12.5
    assert serving.capture_model_percent == {"sentiment.tar.gz": 100.0, "topic.tar.gz": 0.0}
    assert serving.capture_content == "outputs"
    assert serving.capture_max_record_bytes == 64 * 1024
    assert serving.metrics_enabled is False
    assert serving.metrics_namespace == METRICS_NAMESPACE
    assert serving.metrics_interval_seconds == METRICS_INTERVAL_SECONDS


def test_an_override_alone_captures_only_that_model_in_the_container() -> None:
    # The container's own default share is 100: the stage must say 0 for every other model.
    stage = load_app_settings(
        {"stages": {"dev": {"capture_model_percent": {"sentiment.tar.gz": 5}}}}, user_name="alice"
    ).stages[0]
    serving = ServingSettings.from_env(stage.container_environment())
    assert serving.capture_percent == 0
    assert serving.capture_model_percent == {"sentiment.tar.gz": 5.0}


def test_a_default_stage_leaves_capture_off_and_metrics_on_in_the_container() -> None:
    stage = load_app_settings({"stages": {"dev": {}}}, user_name="alice").stages[0]
    serving = ServingSettings.from_env(stage.container_environment())
    assert serving.capture_destination == ""
    assert serving.metrics_enabled is True


def test_the_stage_offers_exactly_the_container_model_host_modes_and_defaults_to_the_container_default() -> None:
    assert set(MODEL_HOST_SETTINGS) == set(MODEL_HOST_MODES)
    stage = load_app_settings({"stages": {"dev": {}}}, user_name="alice").stages[0]
    assert ServingSettings.from_env(stage.container_environment()).model_host == ServingSettings().model_host
    with pytest.raises(SettingsError, match=r"stages\.dev\.model_host"):
        load_app_settings({"stages": {"dev": {"model_host": "pooled"}}}, user_name="alice")


def test_default_tokenizer_setting_reaches_the_serving_settings_as_the_image_folder() -> None:
    with_default = load_app_settings(
        {"stages": {"dev": {"default_tokenizer": "tokenizers/bert-base-cased"}}}, user_name="alice"
    )
    serving = ServingSettings.from_env(with_default.stages[0].container_environment())
    assert serving.default_tokenizer_dir == Path(IMAGE_DEFAULT_TOKENIZER_DIR)
    without = ServingSettings.from_env(
        load_app_settings({"stages": {"dev": {}}}, user_name="alice").stages[0].container_environment()
    )
    assert without.default_tokenizer_dir is None


def test_dockerfile_copies_the_build_argument_folder_to_the_announced_directory() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(rf"^ARG {DEFAULT_TOKENIZER_BUILD_ARG}=\S+$", text, re.MULTILINE)
    copies = [shlex.split(line)[1:] for line in text.splitlines() if line.startswith("COPY ")]
    (destination,) = [parts[-1] for parts in copies if parts[0] == f"${{{DEFAULT_TOKENIZER_BUILD_ARG}}}/"]
    # The trailing "/" makes Docker copy the folder's contents into the directory the environment variable names.
    assert destination == IMAGE_DEFAULT_TOKENIZER_DIR + "/"


@pytest.mark.parametrize("file_name", TOKENIZER_FILES)
def test_a_folder_synth_accepts_is_a_default_tokenizer_the_handler_accepts(
    repo_scratch: Path, tmp_path: Path, file_name: str
) -> None:
    folder = repo_scratch / file_name.replace(".", "-")
    folder.mkdir()
    (folder / file_name).write_text("{}\n")
    check_default_tokenizer(StageSettings(name="dev", default_tokenizer=folder.relative_to(REPO_ROOT).as_posix()))
    archive_without_tokenizer = tmp_path / "model"
    (archive_without_tokenizer / "0").mkdir(parents=True)
    assert find_tokenizer(archive_without_tokenizer, folder) == folder


def test_a_folder_synth_refuses_is_no_default_tokenizer_for_the_handler(tmp_path: Path) -> None:
    placeholder = REPO_ROOT / "container" / "default-tokenizer"
    with pytest.raises(SettingsError):
        check_default_tokenizer(StageSettings(name="dev", default_tokenizer="container/default-tokenizer"))
    (tmp_path / "0").mkdir()
    with pytest.raises(ModelLoadError):
        find_tokenizer(tmp_path, placeholder)
