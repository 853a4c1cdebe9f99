"""The CDK app and the serving container agree on the container's environment variables."""

from __future__ import annotations

from handler.settings import ServingSettings
from stacks.settings import load_app_settings


def test_every_container_setting_from_cdk_context_reaches_the_serving_settings() -> None:
    custom = {
        "server_workers": 2,
        "max_payload_mb": 5,
        "response_timeout_seconds": 45,
        "tf_intra_op_threads": 2,
        "tf_inter_op_threads": 1,
        "jvm_heap": "768m",
        "log_level": "DEBUG",
        "max_texts_per_request": 16,
    }
    stage = load_app_settings({"stages": {"dev": custom}}).stages[0]
    serving = ServingSettings.from_env(stage.container_environment())
    assert (
        serving.workers_per_model,
        serving.max_payload_mb,
        serving.response_timeout_seconds,
        serving.tf_intra_op_threads,
        serving.tf_inter_op_threads,
        serving.jvm_heap,
        serving.log_level,
        serving.max_texts_per_request,
    ) == tuple(custom.values())
