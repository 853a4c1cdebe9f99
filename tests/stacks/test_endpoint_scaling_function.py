"""The endpoint-scaling custom resource function against moto's SageMaker and Application Auto Scaling.

The function is loaded from its asset folder by path (as Lambda loads it), its boto3 clients are moto's, and its
answer to CloudFormation is a real HTTP PUT to a local server standing in for the pre-signed ResponseURL (moto's
in-process mock only patches botocore, so urllib reaches 127.0.0.1 untouched).
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

INDEX = Path(__file__).resolve().parents[2] / "stacks" / "functions" / "endpoint_scaling" / "index.py"
ENDPOINT = "mme-test"
VARIANT = "AllTraffic"
RESOURCE_ID = f"endpoint/{ENDPOINT}/variant/{VARIANT}"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
LIVE_TYPE = "ml.m5.large"
OTHER_TYPE = "ml.c5.xlarge"
RELEASE = "Custom::EndpointScalingRelease"
SCALING = "Custom::EndpointScaling"
PROPERTIES = {
    "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:endpoint-scaling",
    "EndpointName": ENDPOINT,
    "VariantName": VARIANT,
    "InstanceType": LIVE_TYPE,
    "MinCapacity": "1",
    "MaxCapacity": "3",
    "TargetInvocationsPerInstance": "100",
    "ScaleInCooldownSeconds": "300",
    "ScaleOutCooldownSeconds": "60",
    "PolicyName": "InvocationsPerInstance",
}


def _load_index() -> Any:
    spec = importlib.util.spec_from_file_location("endpoint_scaling_index", INDEX)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through the module's entry
    spec.loader.exec_module(module)
    return module


index = _load_index()


@dataclass
class Received:
    """What the local ResponseURL server got: one (headers, raw body) per PUT."""

    puts: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture(scope="module")
def response_server() -> Iterator[tuple[str, Received]]:
    received = Received()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            length = int(self.headers["content-length"])
            received.puts.append((dict(self.headers.items()), self.rfile.read(length)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/cloudformation-response", received
    server.shutdown()
    thread.join()
    server.server_close()


@pytest.fixture(autouse=True)
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield


@pytest.fixture
def sagemaker() -> Any:
    return boto3.client("sagemaker")


@pytest.fixture
def autoscaling() -> Any:
    return boto3.client("application-autoscaling")


def _create_config(sagemaker: Any, name: str, instance_type: str) -> None:
    sagemaker.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[
            {"VariantName": VARIANT, "ModelName": "mme", "InitialInstanceCount": 1, "InstanceType": instance_type}
        ],
    )


@pytest.fixture
def endpoint(sagemaker: Any) -> str:
    """A multi-model endpoint whose one variant runs on LIVE_TYPE."""
    sagemaker.create_model(
        ModelName="mme",
        ExecutionRoleArn="arn:aws:iam::123456789012:role/mme",
        PrimaryContainer={
            "Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/mme:1",
            "Mode": "MultiModel",
            "ModelDataUrl": "s3://models/",
        },
    )
    _create_config(sagemaker, "mme-config-1", LIVE_TYPE)
    sagemaker.create_endpoint(EndpointName=ENDPOINT, EndpointConfigName="mme-config-1")
    return ENDPOINT


def _event(
    url: str,
    resource_type: str,
    request: str,
    properties: dict[str, str] | None = None,
    *,
    old: dict[str, str] | None = None,
    physical_id: str | None = None,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "RequestType": request,
        "ServiceToken": PROPERTIES["ServiceToken"],
        "ResponseURL": url,
        "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/mme-dev/guid",
        "RequestId": f"request-{request}",
        "LogicalResourceId": "Scaling" if resource_type == SCALING else "Release",
        "ResourceType": resource_type,
        "ResourceProperties": PROPERTIES if properties is None else properties,
    }
    if old is not None:
        event["OldResourceProperties"] = old
    if physical_id is not None:
        event["PhysicalResourceId"] = physical_id
    return event


@pytest.fixture
def answer_of(response_server: tuple[str, Received]) -> Any:
    """Run the handler on an event and return the one answer CloudFormation received, checking its form."""
    _, received = response_server

    def run(event: dict[str, Any]) -> dict:
        before = len(received.puts)
        index.handler(event, None)
        assert len(received.puts) == before + 1, "exactly one answer per request"
        headers, body = received.puts[-1]
        lowered = {key.lower(): value for key, value in headers.items()}
        assert lowered["content-type"] == ""  # what the pre-signed S3 URL is signed for
        assert int(lowered["content-length"]) == len(body)
        answer = json.loads(body)
        assert answer["StackId"] == event["StackId"]
        assert answer["RequestId"] == event["RequestId"]
        assert answer["LogicalResourceId"] == event["LogicalResourceId"]
        assert "\n" not in answer["Reason"]
        return answer

    return run


@pytest.fixture
def invoke(response_server: tuple[str, Received], answer_of: Any) -> Any:
    """Run the handler on an event built by `_event` (same arguments but the URL) and return the answer."""
    url, _ = response_server
    return lambda resource_type, request, properties=None, **kwargs: answer_of(
        _event(url, resource_type, request, properties, **kwargs)
    )


def _props(**changes: str) -> dict[str, str]:
    return {**PROPERTIES, **changes}


def _targets(autoscaling: Any) -> list[dict]:
    return autoscaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]


def _policies(autoscaling: Any) -> list[dict]:
    return autoscaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]


def _register_directly(autoscaling: Any) -> None:
    """The state a previous successful EndpointScaling create leaves (set up without the function)."""
    autoscaling.register_scalable_target(
        ServiceNamespace="sagemaker", ResourceId=RESOURCE_ID, ScalableDimension=DIMENSION, MinCapacity=1, MaxCapacity=3
    )
    autoscaling.put_scaling_policy(
        PolicyName="InvocationsPerInstance",
        ServiceNamespace="sagemaker",
        ResourceId=RESOURCE_ID,
        ScalableDimension=DIMENSION,
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": 100.0,
            "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
        },
    )


def _assert_registered(autoscaling: Any, *, minimum: int = 1, maximum: int = 3, policy: str = "InvocationsPerInstance"):
    (target,) = _targets(autoscaling)
    assert (target["ResourceId"], target["ScalableDimension"]) == (RESOURCE_ID, DIMENSION)
    assert (target["MinCapacity"], target["MaxCapacity"]) == (minimum, maximum)
    (found,) = _policies(autoscaling)
    assert (found["PolicyName"], found["ResourceId"], found["PolicyType"]) == (
        policy,
        RESOURCE_ID,
        "TargetTrackingScaling",
    )
    return found["TargetTrackingScalingPolicyConfiguration"]


# --- Custom::EndpointScaling ---


@pytest.mark.usefixtures("endpoint")
def test_scaling_create_registers_target_and_target_tracking_policy(invoke: Any, autoscaling: Any) -> None:
    answer = invoke(SCALING, "Create", _props(TargetInvocationsPerInstance="250"))

    assert answer["Status"] == "SUCCESS", answer["Reason"]
    assert answer["PhysicalResourceId"] == RESOURCE_ID
    assert answer["Data"] == {"ResourceId": RESOURCE_ID}
    assert answer["LogicalResourceId"] == "Scaling"
    configuration = _assert_registered(autoscaling)
    assert configuration == {
        "TargetValue": 250.0,
        "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
        "ScaleInCooldown": 300,
        "ScaleOutCooldown": 60,
    }


@pytest.mark.usefixtures("endpoint")
def test_scaling_update_registers_new_capacity_bounds(invoke: Any, autoscaling: Any) -> None:
    assert invoke(SCALING, "Create")["Status"] == "SUCCESS"

    new = _props(MinCapacity="2", MaxCapacity="6", ScaleOutCooldownSeconds="30")
    answer = invoke(SCALING, "Update", new, old=PROPERTIES, physical_id=RESOURCE_ID)

    assert (answer["Status"], answer["PhysicalResourceId"]) == ("SUCCESS", RESOURCE_ID), answer["Reason"]
    configuration = _assert_registered(autoscaling, minimum=2, maximum=6)
    assert configuration["ScaleOutCooldown"] == 30


@pytest.mark.usefixtures("endpoint")
def test_scaling_update_with_new_policy_name_deletes_the_old_policy(invoke: Any, autoscaling: Any) -> None:
    assert invoke(SCALING, "Create")["Status"] == "SUCCESS"

    answer = invoke(SCALING, "Update", _props(PolicyName="Invocations2"), old=PROPERTIES, physical_id=RESOURCE_ID)

    assert answer["Status"] == "SUCCESS", answer["Reason"]
    _assert_registered(autoscaling, policy="Invocations2")


@pytest.mark.usefixtures("endpoint")
def test_scaling_delete_deregisters_target_and_policies(invoke: Any, autoscaling: Any) -> None:
    assert invoke(SCALING, "Create")["Status"] == "SUCCESS"

    answer = invoke(SCALING, "Delete", physical_id=RESOURCE_ID)

    assert (answer["Status"], answer["PhysicalResourceId"]) == ("SUCCESS", RESOURCE_ID), answer["Reason"]
    assert _targets(autoscaling) == []
    assert _policies(autoscaling) == []


@pytest.mark.parametrize("physical_id", [RESOURCE_ID, "Scaling-request-Create"], ids=["registered-id", "failed-create"])
def test_scaling_delete_of_nothing_registered_succeeds(invoke: Any, autoscaling: Any, physical_id: str) -> None:
    answer = invoke(SCALING, "Delete", physical_id=physical_id)

    assert (answer["Status"], answer["PhysicalResourceId"]) == ("SUCCESS", physical_id), answer["Reason"]
    assert _targets(autoscaling) == []


@pytest.mark.usefixtures("endpoint")
def test_scaling_rollback_ahead_of_the_endpoint_stays_deregistered(invoke: Any, autoscaling: Any) -> None:
    """Rolled back before the endpoint reverts its instance type: registering now would fail that revert."""
    _register_directly(autoscaling)

    answer = invoke(SCALING, "Update", _props(InstanceType=OTHER_TYPE), old=PROPERTIES, physical_id=RESOURCE_ID)

    assert answer["Status"] == "SUCCESS", answer["Reason"]
    assert _targets(autoscaling) == []
    assert _policies(autoscaling) == []


# --- Custom::EndpointScalingRelease ---


@pytest.mark.usefixtures("endpoint")
def test_release_update_to_another_instance_type_deregisters_target_and_policies(invoke: Any, autoscaling: Any) -> None:
    _register_directly(autoscaling)

    answer = invoke(RELEASE, "Update", _props(InstanceType=OTHER_TYPE), old=PROPERTIES, physical_id="release-id")

    assert (answer["Status"], answer["PhysicalResourceId"]) == ("SUCCESS", "release-id"), answer["Reason"]
    assert _targets(autoscaling) == []
    assert _policies(autoscaling) == []


@pytest.mark.usefixtures("endpoint")
def test_release_update_to_the_live_instance_type_leaves_a_registration_alone(invoke: Any, autoscaling: Any) -> None:
    _register_directly(autoscaling)  # [1, 3]

    answer = invoke(RELEASE, "Update", _props(MinCapacity="2", MaxCapacity="5"), old=PROPERTIES, physical_id="r")

    assert answer["Status"] == "SUCCESS", answer["Reason"]
    _assert_registered(autoscaling, minimum=1, maximum=3)  # not re-registered: EndpointScaling owns updates


@pytest.mark.usefixtures("endpoint")
def test_release_update_after_a_rollback_registers_the_variant_again(invoke: Any, autoscaling: Any) -> None:
    """A failed instance-type change rolled back: the endpoint is on its old type, the variant deregistered."""
    old = _props(InstanceType=OTHER_TYPE)

    answer = invoke(RELEASE, "Update", _props(MinCapacity="2", MaxCapacity="4"), old=old, physical_id="r")

    assert answer["Status"] == "SUCCESS", answer["Reason"]
    configuration = _assert_registered(autoscaling, minimum=2, maximum=4)
    assert configuration["TargetValue"] == 100.0
    assert (configuration["ScaleInCooldown"], configuration["ScaleOutCooldown"]) == (300, 60)


def test_release_update_without_the_endpoint_does_nothing(invoke: Any, autoscaling: Any) -> None:
    answer = invoke(RELEASE, "Update", _props(InstanceType=OTHER_TYPE), old=PROPERTIES, physical_id="r")

    assert answer["Status"] == "SUCCESS", answer["Reason"]
    assert _targets(autoscaling) == []


@pytest.mark.usefixtures("endpoint")
@pytest.mark.parametrize("request_type", ["Create", "Delete"])
@pytest.mark.parametrize("registered", [True, False], ids=["registered", "unregistered"])
def test_release_create_and_delete_change_nothing(
    invoke: Any, autoscaling: Any, request_type: str, registered: bool
) -> None:
    if registered:
        _register_directly(autoscaling)
    # A changed type would make an Update deregister; with nothing registered, an Update would register.
    properties = _props(InstanceType=OTHER_TYPE) if registered else PROPERTIES
    physical_id = None if request_type == "Create" else f"release/{RESOURCE_ID}"

    answer = invoke(RELEASE, request_type, properties, physical_id=physical_id)

    assert answer["Status"] == "SUCCESS", answer["Reason"]
    assert answer["PhysicalResourceId"] == f"release/{RESOURCE_ID}"
    if registered:
        _assert_registered(autoscaling)
    else:
        assert _targets(autoscaling) == []


def _switch_config(sagemaker: Any, config_name: str) -> None:
    """UpdateEndpoint's effect on what the function reads (moto 5.2.5 does not implement UpdateEndpoint)."""
    sagemaker.delete_endpoint(EndpointName=ENDPOINT)
    sagemaker.create_endpoint(EndpointName=ENDPOINT, EndpointConfigName=config_name)
    assert sagemaker.describe_endpoint(EndpointName=ENDPOINT)["EndpointConfigName"] == config_name


def test_instance_type_change_then_rollback_round_trip(invoke: Any, sagemaker: Any, autoscaling: Any) -> None:
    """The CloudFormation order of a change (release, endpoint, scaling), then of its rollback (endpoint, release)."""
    # The stack's first create: the endpoint, then the scaling resource.
    sagemaker.create_model(
        ModelName="mme",
        ExecutionRoleArn="arn:aws:iam::123456789012:role/mme",
        PrimaryContainer={"Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/mme:1", "Mode": "MultiModel"},
    )
    assert invoke(RELEASE, "Create")["Status"] == "SUCCESS"
    _create_config(sagemaker, "config-m5", LIVE_TYPE)
    sagemaker.create_endpoint(EndpointName=ENDPOINT, EndpointConfigName="config-m5")
    assert invoke(SCALING, "Create")["Status"] == "SUCCESS"
    _assert_registered(autoscaling)

    # Change to OTHER_TYPE: release first, then the endpoint update, then scaling registers again.
    changed = _props(InstanceType=OTHER_TYPE)
    assert invoke(RELEASE, "Update", changed, old=PROPERTIES, physical_id="r")["Status"] == "SUCCESS"
    assert _targets(autoscaling) == []
    _create_config(sagemaker, "config-c5", OTHER_TYPE)
    _switch_config(sagemaker, "config-c5")
    assert invoke(SCALING, "Update", changed, old=PROPERTIES, physical_id=RESOURCE_ID)["Status"] == "SUCCESS"
    _assert_registered(autoscaling)

    # A later resource fails: scaling rolls back first (stays off), the endpoint reverts, the release restores.
    assert invoke(SCALING, "Update", PROPERTIES, old=changed, physical_id=RESOURCE_ID)["Status"] == "SUCCESS"
    assert _targets(autoscaling) == []
    _switch_config(sagemaker, "config-m5")
    assert invoke(RELEASE, "Update", PROPERTIES, old=changed, physical_id="r")["Status"] == "SUCCESS"
    _assert_registered(autoscaling)


# --- failures always answer FAILED ---


@pytest.mark.usefixtures("endpoint")
@pytest.mark.parametrize("resource_type", [SCALING, RELEASE])
@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"MinCapacity": "two"}, "MinCapacity"),
        ({"MaxCapacity": "2.5"}, "MaxCapacity"),
        ({"ScaleInCooldownSeconds": ""}, "ScaleInCooldownSeconds"),
        ({"PolicyName": "  "}, "PolicyName"),
        ({"MinCapacity": "4", "MaxCapacity": "3"}, "MinCapacity"),
    ],
)
def test_bad_properties_fail_naming_the_property(
    invoke: Any, autoscaling: Any, resource_type: str, changes: dict[str, str], named: str
) -> None:
    answer = invoke(resource_type, "Create", _props(**changes))

    assert answer["Status"] == "FAILED"
    assert named in answer["Reason"]
    assert _targets(autoscaling) == []
    # The rollback's Delete of this failed create must succeed without touching anything.
    assert invoke(resource_type, "Delete", physical_id=answer["PhysicalResourceId"])["Status"] == "SUCCESS"


@pytest.mark.usefixtures("endpoint")
def test_a_missing_property_fails_naming_it(invoke: Any) -> None:
    properties = {key: value for key, value in PROPERTIES.items() if key != "TargetInvocationsPerInstance"}

    answer = invoke(SCALING, "Create", properties)

    assert answer["Status"] == "FAILED"
    assert "TargetInvocationsPerInstance" in answer["Reason"]


@pytest.mark.usefixtures("endpoint")
@pytest.mark.parametrize("resource_type", [RELEASE, SCALING])
def test_an_aws_error_fails_with_its_message(invoke: Any, sagemaker: Any, autoscaling: Any, resource_type: str) -> None:
    """The endpoint's config was deleted behind the stack's back: DescribeEndpointConfig fails."""
    _register_directly(autoscaling)
    sagemaker.delete_endpoint_config(EndpointConfigName="mme-config-1")
    physical_id = RESOURCE_ID if resource_type == SCALING else "r"

    answer = invoke(resource_type, "Update", _props(InstanceType=OTHER_TYPE), old=PROPERTIES, physical_id=physical_id)

    assert (answer["Status"], answer["PhysicalResourceId"]) == ("FAILED", physical_id)
    assert answer["Reason"].startswith(f"could not read the instance type of {RESOURCE_ID}: ")
    assert "DescribeEndpointConfig" in answer["Reason"]
    assert "Could not find endpoint configuration" in answer["Reason"]
    _assert_registered(autoscaling)


@pytest.mark.parametrize("properties", [None, "not-a-mapping"], ids=["missing", "malformed"])
def test_a_malformed_request_still_answers_failed(
    response_server: tuple[str, Received], answer_of: Any, properties: str | None
) -> None:
    event = _event(response_server[0], SCALING, "Create")
    if properties is None:
        del event["ResourceProperties"]
    else:
        event["ResourceProperties"] = properties

    answer = answer_of(event)

    assert answer["Status"] == "FAILED"
    assert answer["Reason"]
    if properties is None:
        assert "ResourceProperties" in answer["Reason"]
    assert answer["PhysicalResourceId"] == "Scaling-request-Create"


@pytest.mark.parametrize("request_type", ["Create", "Delete"])
def test_an_unknown_resource_type_fails_but_deletes(invoke: Any, request_type: str) -> None:
    physical_id = None if request_type == "Create" else "whatever"

    answer = invoke("Custom::Something", request_type, physical_id=physical_id)

    assert answer["Status"] == ("FAILED" if request_type == "Create" else "SUCCESS")
    if request_type == "Create":
        assert "Custom::Something" in answer["Reason"]
