"""Autoscaling of a multi-model endpoint's variant, owned by the stack so that an instance-type change deploys.

SageMaker refuses an UpdateEndpoint that changes the instance type of a variant registered as an Application Auto
Scaling target: "deregister the variant as a scalable target" first, update, then register it again (SageMaker
developer guide, "Update or delete an endpoint that uses auto scaling"). CloudFormation's native ScalableTarget
cannot be ordered around the endpoint update that way, so one small function backs two custom resources:

- `Custom::EndpointScalingRelease`, before the endpoint: when the desired instance type differs from the live one,
  it deregisters the variant (its policies go with it); when they are equal and the target is missing (a rolled-back
  instance-type change), it registers it again.
- `Custom::EndpointScaling`, after the endpoint: registers the variant with [min, max] and puts the target-tracking
  policy on `SageMakerVariantInvocationsPerInstance` (the multi-model autoscaling guide's metric). Re-registering
  clamps the live count into a new [min, max] at once (RegisterScalableTarget API reference).

Both get the whole scaling spec, so either can restore it. The function's code is `stacks/functions/endpoint_scaling`.
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Acknowledgment, CustomResource, Duration, Stack, Validations
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from stacks.multi_model_endpoint import VARIANT_NAME, MultiModelEndpoint, stack_log_group
from stacks.nag import nag_resource
from stacks.settings import StageSettings

FUNCTION_CODE = Path(__file__).resolve().parent / "functions" / "endpoint_scaling"
#: The newest Python runtime Lambda offers in this CDK release (cdk-nag L1 wants the latest).
FUNCTION_RUNTIME = lambda_.Runtime.PYTHON_3_14
RELEASE_RESOURCE_TYPE = "Custom::EndpointScalingRelease"
SCALING_RESOURCE_TYPE = "Custom::EndpointScaling"
#: The service-linked role Application Auto Scaling uses for SageMaker variants (created on first registration).
SCALING_SERVICE_NAME = "sagemaker.application-autoscaling.amazonaws.com"
SCALING_SERVICE_ROLE = "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"


class EndpointAutoscaling(Construct):
    """Target tracking on invocations per instance for the endpoint's one variant, safe across instance-type changes.

    Props:
        endpoint: the `MultiModelEndpoint` to scale; its endpoint is made to depend on the release resource.
        settings: `instance_type`, `min_instance_count`, `max_instance_count`, `target_invocations_per_instance`,
            `scale_in_cooldown_seconds`, `scale_out_cooldown_seconds`, `log_retention_days`.

    Exposes `function`, `release` and `scaling` (the two custom resources) and `resource_id`.
    """

    def __init__(
        self, scope: Construct, construct_id: str, *, endpoint: MultiModelEndpoint, settings: StageSettings
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        self.resource_id = f"endpoint/{endpoint.endpoint_name}/variant/{VARIANT_NAME}"
        log_group = stack_log_group(self, "FunctionLogs", retention_days=settings.log_retention_days)
        role = iam.Role(
            self,
            "FunctionRole",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"Registers and deregisters the autoscaling of {endpoint.endpoint_name} around its updates",
        )
        self.function = lambda_.Function(
            self,
            "Function",
            runtime=FUNCTION_RUNTIME,
            handler="index.handler",
            code=lambda_.Code.from_asset(str(FUNCTION_CODE), exclude=["__pycache__", "*.pyc"]),
            role=role,
            log_group=log_group,
            # A handful of API calls, each with bounded retries; the timeout bounds how long CloudFormation could
            # wait for an answer if AWS hangs.
            timeout=Duration.minutes(5),
            memory_size=256,
            description="Custom resources that keep an endpoint's autoscaling registered across instance-type changes",
        )
        self._grant(role=role, log_group=log_group, endpoint=endpoint, stack=stack)
        skip_function_checks(self.function)

        properties = {
            "EndpointName": endpoint.endpoint_name,
            "VariantName": VARIANT_NAME,
            "InstanceType": settings.instance_type,
            "MinCapacity": str(settings.min_instance_count),
            "MaxCapacity": str(settings.max_instance_count),
            "TargetInvocationsPerInstance": str(settings.target_invocations_per_instance),
            "ScaleInCooldownSeconds": str(settings.scale_in_cooldown_seconds),
            "ScaleOutCooldownSeconds": str(settings.scale_out_cooldown_seconds),
            "PolicyName": "InvocationsPerInstance",
        }
        self.release = CustomResource(
            self,
            "Release",
            service_token=self.function.function_arn,
            resource_type=RELEASE_RESOURCE_TYPE,
            properties=properties,
        )
        # The release must run before the endpoint update, after the function can act.
        self.release.node.add_dependency(role)
        endpoint.endpoint.add_resource_dependency(self.release.node.default_child)  # type: ignore[arg-type]
        self.scaling = CustomResource(
            self,
            "Scaling",
            service_token=self.function.function_arn,
            resource_type=SCALING_RESOURCE_TYPE,
            # The endpoint's name attribute, not the literal: registration must follow the endpoint's create/update.
            properties={**properties, "EndpointName": endpoint.endpoint.attr_endpoint_name},
        )
        self.scaling.node.add_dependency(role)

    def _grant(self, *, role: iam.Role, log_group: logs.LogGroup, endpoint: MultiModelEndpoint, stack: Stack) -> None:
        role.add_to_policy(
            iam.PolicyStatement(
                sid="WriteFunctionLogs",
                actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                resources=[log_group.log_group_arn],
            )
        )
        endpoint_arn = stack.format_arn(
            service="sagemaker", resource="endpoint", resource_name=endpoint.endpoint_name.lower()
        )
        config_arns = stack.format_arn(service="sagemaker", resource="endpoint-config", resource_name="*")
        scalable_targets = stack.format_arn(
            service="application-autoscaling", resource="scalable-target", resource_name="*"
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ReadEndpoint",
                actions=["sagemaker:DescribeEndpoint", "sagemaker:DescribeEndpointConfig"],
                resources=[endpoint_arn, config_arns],
            )
        )
        # Application Auto Scaling checks the caller may change the variant's capacity when registering it.
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ScaleEndpointVariant",
                actions=["sagemaker:UpdateEndpointWeightsAndCapacities"],
                resources=[endpoint_arn],
            )
        )
        # Write actions need the ScalableTarget resource type, whose ARN ends in an ID generated at registration:
        # scoped to this account and region, and by the two condition keys to SageMaker variant counts
        # (Service Authorization Reference, "Actions, resources, and condition keys for Application Auto Scaling").
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ManageVariantScaling",
                actions=[
                    "application-autoscaling:RegisterScalableTarget",
                    "application-autoscaling:DeregisterScalableTarget",
                    "application-autoscaling:PutScalingPolicy",
                    "application-autoscaling:DeleteScalingPolicy",
                ],
                resources=[scalable_targets],
                conditions={
                    "StringEquals": {
                        "application-autoscaling:service-namespace": "sagemaker",
                        "application-autoscaling:scalable-dimension": SCALABLE_DIMENSION,
                    }
                },
            )
        )
        # The Describe actions support no resource type at all.
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ReadScaling",
                actions=[
                    "application-autoscaling:DescribeScalableTargets",
                    "application-autoscaling:DescribeScalingPolicies",
                ],
                resources=["*"],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="CreateScalingServiceRole",
                actions=["iam:CreateServiceLinkedRole"],
                resources=[
                    stack.format_arn(
                        service="iam",
                        region="",
                        resource="role",
                        resource_name=f"aws-service-role/{SCALING_SERVICE_NAME}/{SCALING_SERVICE_ROLE}",
                    )
                ],
                conditions={"StringEquals": {"iam:AWSServiceName": SCALING_SERVICE_NAME}},
            )
        )
        Validations.of(role).acknowledge(
            Acknowledgment(
                id="AwsSolutions-IAM5[Resource::*]",
                reason="Only DescribeScalableTargets and DescribeScalingPolicies (read-only) use Resource '*': "
                "neither supports a resource type.",
            ),
            Acknowledgment(
                id=f"AwsSolutions-IAM5[Resource::{nag_resource(role, scalable_targets)}]",
                reason="A scalable target's ARN ends in an ID generated at registration; the write actions are "
                "limited to SageMaker variant instance counts by the service-namespace and scalable-dimension "
                "conditions.",
            ),
            Acknowledgment(
                id=f"AwsSolutions-IAM5[Resource::{nag_resource(role, config_arns)}]",
                reason="DescribeEndpointConfig (read-only) of the endpoint's configs, whose names CloudFormation "
                "generates at each update.",
            ),
        )


def skip_function_checks(function: lambda_.Function) -> None:
    """Record, on one of our Lambda functions, the checkov and cfn-lint findings that do not apply to it, and why."""
    cfn_function = function.node.default_child
    assert isinstance(cfn_function, lambda_.CfnFunction)
    cfn_function.add_metadata(
        "checkov",
        {
            "skip": [
                {
                    "id": "CKV_AWS_117",
                    "comment": "It calls AWS APIs only; inside a VPC it would need endpoints or NAT to reach them.",
                },
                {
                    "id": "CKV_AWS_116",
                    "comment": "Failures are answered (to CloudFormation) or logged and retried by the next alarm; "
                    "a dead-letter queue would hold events nobody acts on.",
                },
                {
                    "id": "CKV_AWS_115",
                    "comment": "Reserved concurrency fails to deploy in accounts with a low concurrency quota "
                    "(unreserved may not drop below 10), and it runs a few times per deploy or idle period.",
                },
            ]
        },
    )
    # CDK's Function lists its role in DependsOn beside the GetAtt of its ARN (so the policy exists first).
    cfn_function.add_metadata("cfn-lint", {"config": {"ignore_checks": ["W3005"]}})
