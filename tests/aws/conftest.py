"""A deployed stage `dev` in moto for every test here (see moto_stage.py for what moto models and what it does not)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws
from moto_stage import NAMES, REGION, STACK, STAND_IN_TEMPLATE, STORE_PARAMETERS, SWITCH, MotoStage

from mme.aws.names import AWAKE


@pytest.fixture
def moto_stage(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoStage]:
    """An awake stage `dev`: store parameters, switch "awake", endpoint stack, endpoint InService."""
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        session = boto3.session.Session(region_name=REGION)
        ssm = session.client("ssm")
        for name, value in {**STORE_PARAMETERS, "endpoint-name": STACK}.items():
            ssm.put_parameter(Name=f"{NAMES.ssm_prefix}/{name}", Value=value, Type="String")
        ssm.put_parameter(Name=SWITCH, Value=AWAKE, Type="String")
        session.client("cloudformation").create_stack(StackName=STACK, TemplateBody=json.dumps(STAND_IN_TEMPLATE))
        sagemaker = session.client("sagemaker")
        sagemaker.create_model(
            ModelName="model",
            ExecutionRoleArn="arn:aws:iam::123456789012:role/sagemaker",
            PrimaryContainer={"Image": "image", "Mode": "MultiModel", "ModelDataUrl": "s3://models-bucket/models/"},
        )
        sagemaker.create_endpoint_config(
            EndpointConfigName="config",
            ProductionVariants=[
                {
                    "VariantName": "AllTraffic",
                    "ModelName": "model",
                    "InstanceType": "ml.m5.large",
                    "InitialInstanceCount": 1,
                }
            ],
        )
        stage = MotoStage(session=session)
        stage.create_endpoint()
        yield stage
