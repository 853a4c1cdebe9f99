"""The stateless serving stack: the multi-model endpoint, its autoscaling and its monitoring.

Destroying `EndpointStack` stops every per-hour cost and leaves the model store untouched; nothing in it outlives it.
"""

from __future__ import annotations

from aws_cdk import CfnOutput, Stack
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from mme.aws.names import ENDPOINT_NAME_PARAMETER
from stacks.endpoint_scaling import EndpointAutoscaling
from stacks.model_store import ModelStoreRef
from stacks.monitoring import EndpointMonitoring
from stacks.multi_model_endpoint import MultiModelEndpoint
from stacks.nag import nag_resource
from stacks.settings import StageSettings

__all__ = ["EndpointStack", "nag_resource"]


class EndpointStack(Stack):
    """Deployment unit for the endpoint, its autoscaling and its monitoring. Stateless: destroy it to stop paying.

    Props:
        settings: the stage settings.
        store_stack_name: the stage's `ModelStoreStack`; bucket and key are imported from its exports, so the store
            cannot be deleted while this stack exists (`ModelStoreRef.from_exports`).

    Outputs `EndpointName` (also SSM `<ssm_prefix>/endpoint-name`, which disappears with the stack so the `mme`
    CLI can tell a sleeping endpoint from a missing one).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: StageSettings,
        store_stack_name: str,
        **kwargs: object,
    ) -> None:
        super().__init__(
            scope,
            construct_id,
            termination_protection=settings.termination_protection,
            description="Multi-model SageMaker endpoint, autoscaling and alarms (stateless; destroy to stop costs)",
            **kwargs,  # type: ignore[arg-type]
        )
        store = ModelStoreRef.from_exports(
            self,
            store_stack_name=store_stack_name,
            model_prefix=settings.model_prefix,
            capture_prefix=settings.capture_prefix,
        )
        # The endpoint is named after this stack: unique per account and region, known at synth (so its log group
        # can be created first), and never changed, so updates never need a replacement.
        self.serving = MultiModelEndpoint(
            self, "Serving", store=store, settings=settings, endpoint_name=self.stack_name
        )
        self.autoscaling = EndpointAutoscaling(self, "Autoscaling", endpoint=self.serving, settings=settings)
        self.monitoring = EndpointMonitoring(self, "Monitoring", endpoint=self.serving, settings=settings)

        self.endpoint_name_output = CfnOutput(self, "EndpointName", value=self.serving.endpoint.attr_endpoint_name)
        self.prefix_output = CfnOutput(self, "ModelPrefix", value=settings.model_prefix)
        ssm.StringParameter(
            self,
            "EndpointNameParameter",
            parameter_name=f"{settings.ssm_prefix}/{ENDPOINT_NAME_PARAMETER}",
            string_value=self.serving.endpoint.attr_endpoint_name,
            description="Name of this stage's multi-model endpoint (absent while the endpoint stack is destroyed)",
        )
