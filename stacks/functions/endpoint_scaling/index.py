"""One Lambda function behind two CloudFormation custom resources that own a SageMaker variant's autoscaling.

SageMaker refuses an UpdateEndpoint that changes the instance type of a variant registered with Application Auto
Scaling; the variant must be deregistered first and registered again after the update (SageMaker developer guide,
"Update endpoints that use auto scaling"). CloudFormation's native ScalableTarget cannot be ordered around the
endpoint update, so the stack declares:

- ``Custom::EndpointScalingRelease``, before the endpoint. Update: when the variant's live instance type differs from
  the desired ``InstanceType``, delete the variant's scaling policies and deregister it; when they are equal and the
  variant is not registered (a rolled-back instance-type change), register it again with the full spec. Create and
  Delete do nothing (Create only validates the properties).
- ``Custom::EndpointScaling``, after the endpoint. Create/Update: register the variant with [min, max] and put the
  target-tracking policy; an Update that renames the policy deletes the old one. Its physical id is the scalable
  target's ResourceId (``endpoint/<EndpointName>/variant/<VariantName>``); Delete deregisters that id.

Both get the same string properties (CloudFormation stringifies): EndpointName, VariantName, InstanceType,
MinCapacity, MaxCapacity, TargetInvocationsPerInstance, ScaleInCooldownSeconds, ScaleOutCooldownSeconds, PolicyName.

The function answers CloudFormation itself (a PUT to the pre-signed ResponseURL), and any failure becomes a FAILED
answer with a one-line Reason: CloudFormation would otherwise wait an hour for a response. Only the standard library
and boto3 are used; this folder is the function's whole code asset.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

LOG = logging.getLogger(__name__)
# Lambda's root logger passes WARNING and up by default; the actions taken are worth an INFO line each.
LOG.setLevel(logging.INFO)

RELEASE_TYPE = "Custom::EndpointScalingRelease"
SCALING_TYPE = "Custom::EndpointScaling"
NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
METRIC = "SageMakerVariantInvocationsPerInstance"
RESOURCE_ID = re.compile(r"endpoint/[^/]+/variant/[^/]+")
#: CloudFormation rejects response bodies over 4 KiB; the Reason is the only unbounded field.
MAX_REASON_CHARS = 1024
RESPONSE_TIMEOUT_SECONDS = 30
# Bounded timeouts and retries: a hung AWS call must end (as FAILED) well inside the function's timeout.
AWS_CONFIG = Config(connect_timeout=5, read_timeout=20, retries={"max_attempts": 3, "mode": "standard"})

#: boto3 clients are untyped at runtime (no stubs in the Lambda runtime).
Client = Any


class PropertyError(ValueError):
    """A resource property is missing or malformed; the message names it."""


class ScalingError(RuntimeError):
    """An AWS call failed; the message says what was being done and carries botocore's message."""


@dataclass(frozen=True)
class ScalingSpec:
    """The validated resource properties: which variant to scale, and how."""

    endpoint_name: str
    variant_name: str
    instance_type: str
    min_capacity: int
    max_capacity: int
    target_invocations_per_instance: int
    scale_in_cooldown_seconds: int
    scale_out_cooldown_seconds: int
    policy_name: str

    @property
    def resource_id(self) -> str:
        """The Application Auto Scaling ResourceId of the variant."""
        return f"endpoint/{self.endpoint_name}/variant/{self.variant_name}"


@dataclass(frozen=True)
class Clients:
    """The two AWS clients the function uses."""

    sagemaker: Client
    autoscaling: Client


def make_clients() -> Clients:
    """Clients created per invocation (not at import), so a test's moto mock applies to them."""
    return Clients(
        sagemaker=boto3.client("sagemaker", config=AWS_CONFIG),
        autoscaling=boto3.client("application-autoscaling", config=AWS_CONFIG),
    )


def _text(properties: Mapping[str, Any], name: str) -> str:
    value = properties.get(name)
    if not isinstance(value, str) or not value.strip():
        raise PropertyError(f"property {name} is missing or empty")
    return value.strip()


def _integer(properties: Mapping[str, Any], name: str, minimum: int) -> int:
    value = properties.get(name)
    if value is None:
        raise PropertyError(f"property {name} is missing")
    # CloudFormation sends strings; a direct invocation may send numbers. A bool is not a count.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise PropertyError(f"property {name} must be an integer, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise PropertyError(f"property {name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise PropertyError(f"property {name} must be at least {minimum}, got {number}")
    return number


def parse_spec(properties: Mapping[str, Any]) -> ScalingSpec:
    """Validate the resource properties into a `ScalingSpec`; raises `PropertyError` naming the bad property."""
    spec = ScalingSpec(
        endpoint_name=_text(properties, "EndpointName"),
        variant_name=_text(properties, "VariantName"),
        instance_type=_text(properties, "InstanceType"),
        min_capacity=_integer(properties, "MinCapacity", 0),
        max_capacity=_integer(properties, "MaxCapacity", 1),
        target_invocations_per_instance=_integer(properties, "TargetInvocationsPerInstance", 1),
        scale_in_cooldown_seconds=_integer(properties, "ScaleInCooldownSeconds", 0),
        scale_out_cooldown_seconds=_integer(properties, "ScaleOutCooldownSeconds", 0),
        policy_name=_text(properties, "PolicyName"),
    )
    if spec.min_capacity > spec.max_capacity:
        raise PropertyError(f"property MinCapacity ({spec.min_capacity}) exceeds MaxCapacity ({spec.max_capacity})")
    if "/" in spec.endpoint_name or "/" in spec.variant_name:
        raise PropertyError("properties EndpointName and VariantName must not contain '/'")
    return spec


@contextmanager
def failing_as(action: str) -> Iterator[None]:
    """Turn an AWS error inside the block into a `ScalingError` saying `action` failed, with botocore's message."""
    try:
        yield
    except (ClientError, BotoCoreError) as error:
        raise ScalingError(f"could not {action}: {error}") from error


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def live_instance_type(sagemaker: Client, endpoint_name: str, variant_name: str) -> str | None:
    """The instance type the endpoint's current config gives the variant; None if there is no such endpoint/variant."""
    try:
        endpoint = sagemaker.describe_endpoint(EndpointName=endpoint_name)
    except ClientError as error:
        # SageMaker answers a missing endpoint with a ValidationException, not a dedicated error code.
        if _error_code(error) == "ValidationException" and "Could not find endpoint" in str(error):
            return None
        raise
    config = sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    for variant in config.get("ProductionVariants", []):
        if variant.get("VariantName") == variant_name:
            # A serverless variant has no instance type; None means "nothing instance-based to protect".
            return variant.get("InstanceType")
    return None


def is_registered(autoscaling: Client, resource_id: str) -> bool:
    """Whether the variant is a registered scalable target."""
    response = autoscaling.describe_scalable_targets(
        ServiceNamespace=NAMESPACE, ResourceIds=[resource_id], ScalableDimension=DIMENSION
    )
    return any(target.get("ResourceId") == resource_id for target in response.get("ScalableTargets", []))


def _policy_names(autoscaling: Client, resource_id: str) -> list[str]:
    pages = autoscaling.get_paginator("describe_scaling_policies").paginate(
        ServiceNamespace=NAMESPACE, ResourceId=resource_id, ScalableDimension=DIMENSION
    )
    # Filter again here: the ResourceId filter is a request parameter, and equality is what is meant.
    return [
        policy["PolicyName"]
        for page in pages
        for policy in page.get("ScalingPolicies", [])
        if policy.get("ResourceId") == resource_id
    ]


def delete_policy(autoscaling: Client, resource_id: str, policy_name: str) -> bool:
    """Delete one scaling policy of the variant; False if it did not exist."""
    if policy_name not in _policy_names(autoscaling, resource_id):
        return False
    try:
        autoscaling.delete_scaling_policy(
            PolicyName=policy_name, ServiceNamespace=NAMESPACE, ResourceId=resource_id, ScalableDimension=DIMENSION
        )
    except ClientError as error:
        if _error_code(error) == "ObjectNotFoundException":  # deleted meanwhile
            return False
        raise
    LOG.info("deleted scaling policy %s of %s", policy_name, resource_id)
    return True


def register(autoscaling: Client, spec: ScalingSpec) -> None:
    """Register (or update) the variant as a scalable target and put its target-tracking policy.

    Re-registering an existing target updates [min, max] and moves the live instance count into it at once.
    """
    autoscaling.register_scalable_target(
        ServiceNamespace=NAMESPACE,
        ResourceId=spec.resource_id,
        ScalableDimension=DIMENSION,
        MinCapacity=spec.min_capacity,
        MaxCapacity=spec.max_capacity,
    )
    autoscaling.put_scaling_policy(
        PolicyName=spec.policy_name,
        ServiceNamespace=NAMESPACE,
        ResourceId=spec.resource_id,
        ScalableDimension=DIMENSION,
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": float(spec.target_invocations_per_instance),
            "PredefinedMetricSpecification": {"PredefinedMetricType": METRIC},
            "ScaleInCooldown": spec.scale_in_cooldown_seconds,
            "ScaleOutCooldown": spec.scale_out_cooldown_seconds,
        },
    )
    LOG.info(
        "registered %s in [%d, %d] with policy %s (%d invocations per instance)",
        spec.resource_id,
        spec.min_capacity,
        spec.max_capacity,
        spec.policy_name,
        spec.target_invocations_per_instance,
    )


def deregister(autoscaling: Client, resource_id: str) -> bool:
    """Delete the variant's scaling policies and deregister it; False if it was not registered.

    Deregistering deletes the policies too, but the SageMaker guide deletes them first, and doing so explicitly
    leaves nothing behind whatever the order AWS applies.
    """
    if not is_registered(autoscaling, resource_id):
        LOG.info("%s is not registered; nothing to deregister", resource_id)
        return False
    for policy_name in _policy_names(autoscaling, resource_id):
        delete_policy(autoscaling, resource_id, policy_name)
    try:
        autoscaling.deregister_scalable_target(
            ServiceNamespace=NAMESPACE, ResourceId=resource_id, ScalableDimension=DIMENSION
        )
    except ClientError as error:
        if _error_code(error) == "ObjectNotFoundException":  # deregistered meanwhile (e.g. the endpoint was deleted)
            return False
        raise
    LOG.info("deregistered %s", resource_id)
    return True


def _failed_create_id(event: Mapping[str, Any]) -> str:
    return f"{event.get('LogicalResourceId', 'EndpointScaling')}-{event.get('RequestId', 'unknown')}"


def initial_physical_id(event: Mapping[str, Any]) -> str:
    """The physical id to answer with, also when the request fails: the existing one, else the one to create.

    A scaling Create that fails half-way still answers with its ResourceId, so the Delete that CloudFormation sends
    on rollback deregisters whatever was registered. With unparsable properties the id is no ResourceId, so that
    Delete does nothing.
    """
    existing = event.get("PhysicalResourceId")
    if existing:
        return str(existing)
    try:
        resource_id = parse_spec(event.get("ResourceProperties") or {}).resource_id
    except PropertyError:
        return _failed_create_id(event)
    return resource_id if event.get("ResourceType") == SCALING_TYPE else f"release/{resource_id}"


def _release_for_change(autoscaling: Client, spec: ScalingSpec, live: str) -> None:
    """Deregister the variant because its instance type is about to change from `live` to the spec's."""
    with failing_as(f"deregister {spec.resource_id} before the instance type change {live} -> {spec.instance_type}"):
        deregister(autoscaling, spec.resource_id)


def handle_release(event: Mapping[str, Any], clients: Clients) -> tuple[str, dict[str, str]]:
    """`Custom::EndpointScalingRelease`: free the variant before an instance-type change, restore it after a rollback.

    Returns (physical id, Data). The physical id never changes, so CloudFormation never sends it a replacing Delete.
    """
    request = event["RequestType"]
    physical_id = initial_physical_id(event)
    if request == "Delete":
        return physical_id, {}
    spec = parse_spec(event["ResourceProperties"])
    if request != "Update":
        LOG.info("%s %s: nothing to do (the endpoint is created after this resource)", request, RELEASE_TYPE)
        return physical_id, {}
    with failing_as(f"read the instance type of {spec.resource_id}"):
        live = live_instance_type(clients.sagemaker, spec.endpoint_name, spec.variant_name)
    if live is None:
        LOG.info("endpoint %s has no variant %s yet; nothing to release", spec.endpoint_name, spec.variant_name)
    elif live != spec.instance_type:
        _release_for_change(clients.autoscaling, spec, live)
    else:
        # Equal types: either nothing changes, or CloudFormation is rolling back a failed change (this resource rolls
        # back after the endpoint), which left the variant deregistered. Restore it so the stack keeps autoscaling.
        with failing_as(f"register {spec.resource_id} again on {live}"):
            if not is_registered(clients.autoscaling, spec.resource_id):
                register(clients.autoscaling, spec)
    return physical_id, {}


def handle_scaling(event: Mapping[str, Any], clients: Clients) -> tuple[str, dict[str, str]]:
    """`Custom::EndpointScaling`: register the variant and its policy; Delete deregisters it.

    Returns (physical id, Data); the physical id is the ResourceId, so a renamed endpoint or variant makes
    CloudFormation delete (deregister) the old target after the update.
    """
    request = event["RequestType"]
    if request == "Delete":
        resource_id = str(event.get("PhysicalResourceId", ""))
        if not RESOURCE_ID.fullmatch(resource_id):
            LOG.info("physical id %r is no scalable target (a failed create); nothing to deregister", resource_id)
            return resource_id, {}
        with failing_as(f"deregister {resource_id}"):
            deregister(clients.autoscaling, resource_id)
        return resource_id, {}

    spec = parse_spec(event["ResourceProperties"])
    data = {"ResourceId": spec.resource_id}
    with failing_as(f"read the instance type of {spec.resource_id}"):
        live = live_instance_type(clients.sagemaker, spec.endpoint_name, spec.variant_name)
    if live is not None and live != spec.instance_type:
        # Forward, this resource runs after the endpoint, so the types match. They differ only in a rollback where
        # this resource rolls back before the endpoint: registering now would make the endpoint's rollback (an
        # instance-type change) fail. Stay deregistered; the release resource registers again after the endpoint.
        LOG.warning("%s runs on %s, not %s: leaving it deregistered", spec.resource_id, live, spec.instance_type)
        _release_for_change(clients.autoscaling, spec, live)
        return spec.resource_id, data
    with failing_as(f"register {spec.resource_id}"):
        register(clients.autoscaling, spec)
    old_policy = event.get("OldResourceProperties", {}).get("PolicyName")
    # A renamed policy on the same target would otherwise keep scaling alongside the new one. (A changed ResourceId
    # needs nothing here: CloudFormation deletes the old target, policies included.)
    same_target = request == "Update" and event.get("PhysicalResourceId") == spec.resource_id
    if same_target and old_policy and old_policy != spec.policy_name:
        with failing_as(f"delete the old scaling policy {old_policy} of {spec.resource_id}"):
            delete_policy(clients.autoscaling, spec.resource_id, old_policy)
    return spec.resource_id, data


def _one_line(message: str) -> str:
    line = " ".join(message.split())
    return line if len(line) <= MAX_REASON_CHARS else line[: MAX_REASON_CHARS - 3] + "..."


def send_response(
    event: Mapping[str, Any], status: str, reason: str, physical_id: str, data: Mapping[str, str]
) -> None:
    """PUT the result to CloudFormation's pre-signed ResponseURL; raises if it cannot be delivered."""
    body = json.dumps(
        {
            "Status": status,
            "Reason": _one_line(reason),
            "PhysicalResourceId": physical_id,
            "StackId": event["StackId"],
            "RequestId": event["RequestId"],
            "LogicalResourceId": event["LogicalResourceId"],
            "Data": dict(data),
        }
    ).encode()
    url = event["ResponseURL"]
    if urllib.parse.urlsplit(url).scheme not in ("https", "http"):
        raise ValueError(f"ResponseURL must be an http(s) URL, got scheme {urllib.parse.urlsplit(url).scheme!r}")
    # The pre-signed S3 URL is signed for an empty content-type: any other value makes S3 refuse the PUT.
    request = urllib.request.Request(  # noqa: S310 -- the scheme is checked above
        url, data=body, method="PUT", headers={"content-type": "", "content-length": str(len(body))}
    )
    with urllib.request.urlopen(request, timeout=RESPONSE_TIMEOUT_SECONDS) as response:  # noqa: S310 -- checked above
        LOG.info("sent %s for %s: HTTP %s", status, event["LogicalResourceId"], response.status)


def handler(event: dict[str, Any], context: Any) -> None:
    """Lambda entry point: handle the custom resource request and always answer CloudFormation.

    Any exception becomes a FAILED answer whose Reason is the exception's message on one line. Only a failure to
    deliver the answer itself is raised (so Lambda retries the asynchronous invocation).
    """
    del context  # unused: the answer goes to the ResponseURL, not to the caller
    LOG.info("request: %s", json.dumps({key: value for key, value in event.items() if key != "ResponseURL"}))
    status, reason, data = "SUCCESS", "", {}
    physical_id = str(event.get("PhysicalResourceId") or _failed_create_id(event))
    try:
        physical_id = initial_physical_id(event)
        resource_type = event.get("ResourceType")
        clients = make_clients()
        if resource_type == RELEASE_TYPE:
            physical_id, data = handle_release(event, clients)
        elif resource_type == SCALING_TYPE:
            physical_id, data = handle_scaling(event, clients)
        elif event.get("RequestType") != "Delete":  # never block deleting a resource this function never made
            raise PropertyError(f"resource type {resource_type!r} is neither {RELEASE_TYPE} nor {SCALING_TYPE}")
        reason = f"{event.get('RequestType')} {resource_type} done"
    except PropertyError as error:
        LOG.error("invalid properties: %s", error)  # the message says it all; no traceback
        status, reason = "FAILED", str(error)
    except Exception as error:
        # Whatever went wrong, CloudFormation must hear FAILED now rather than time out after an hour.
        LOG.exception("request failed")
        status, reason = "FAILED", str(error) or type(error).__name__
        if isinstance(error, KeyError):
            reason = f"the request lacks the field {error}"
    send_response(event, status, reason, physical_id, data)
