"""`find_stage`: a deployed stage read from the SSM parameters its stacks publish (moto's SSM)."""

from __future__ import annotations

import pytest
from moto_stage import NAMES, REGION, STACK, STORE_PARAMETERS, MotoStage

from mme.aws.names import StageNames
from mme.aws.stage import DEFAULT_CAPTURE_PREFIX, StageNotFoundError, find_stage
from stacks.settings import StageSettings


def test_a_stage_is_read_from_its_parameters_capture_prefix_included(moto_stage: MotoStage) -> None:
    stage = find_stage(moto_stage.session, NAMES)

    assert (stage.region, stage.bucket, stage.model_prefix, stage.endpoint_name) == (
        REGION,
        "models-bucket",
        "models/",
        STACK,
    )
    assert stage.capture_prefix == STORE_PARAMETERS["capture-prefix"] == "requests/"


def test_a_store_deployed_before_the_capture_prefix_parameter_captures_under_the_default(
    moto_stage: MotoStage,
) -> None:
    moto_stage.client("ssm").delete_parameter(Name=f"{NAMES.ssm_prefix}/capture-prefix")

    stage = find_stage(moto_stage.session, NAMES)

    assert stage.capture_prefix == DEFAULT_CAPTURE_PREFIX == "capture/"
    assert stage.bucket == "models-bucket"


def test_the_fallback_is_a_stage_s_default_capture_prefix() -> None:
    assert StageSettings(name="dev").capture_prefix == DEFAULT_CAPTURE_PREFIX


def test_a_stage_without_its_store_parameters_is_not_found(moto_stage: MotoStage) -> None:
    with pytest.raises(StageNotFoundError, match="Deploy Mme-alice-dev-ModelStore"):
        find_stage(moto_stage.session, StageNames(stage="dev", owner="alice"))
