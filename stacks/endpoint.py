"""The stateless serving stack: the multi-model endpoint, its autoscaling and its monitoring.

Destroying `EndpointStack` stops every per-hour cost and leaves the model store untouched; nothing in it outlives it.
"""

from __future__ import annotations

from aws_cdk import CfnOutput, Stack
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from mme.aws.names import ENDPOINT_NAME_PARAMETER
from stacks.endpoint_scaling import EndpointAutoscaling
from stacks.endpoint_sleep import AwakeSchedule, EndpointSwitch, IdleSleep
from stacks.model_store import ModelStoreRef
from stacks.monitoring import EndpointMonitoring
from stacks.multi_model_endpoint import MultiModelEndpoint
from stacks.settings import StageSettings


class EndpointStack(Stack):
    """Deployment unit for the endpoint, its autoscaling and its monitoring. Stateless: destroy it to stop paying.

    Props:
        settings: the stage settings.
        store_stack_name: the stage's `ModelStoreStack`; bucket and key are imported from its exports, so the store
            cannot be deleted while this stack exists (`ModelStoreRef.from_exports`).

    The endpoint, its autoscaling and alarms exist only while the stage's switch says "awake" (`EndpointSwitch`);
    with `auto_sleep`, `IdleSleep` flips it after `idle_minutes` without invocations.

    Outputs `EndpointName` (also SSM `<ssm_prefix>/endpoint-name`, which disappears with the stack so the `mme`
    CLI can tell a sleeping endpoint from a destroyed stack).
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
        # What exists only while the stage is awake; everything else costs nothing per hour and stays.
        self.switch = EndpointSwitch(self, "Switch", ssm_prefix=settings.ssm_prefix)
        self.switch.only_while_awake(
            self.serving.endpoint,
            self.autoscaling.release,
            self.autoscaling.scaling,
            *self.monitoring.alarms.values(),
            # It shows the alarms' states and the endpoint's metrics, neither of which exists while asleep.
            self.monitoring.dashboard,
        )
        self.idle_sleep = (
            IdleSleep(self, "IdleSleep", endpoint=self.serving, switch=self.switch, settings=settings)
            if settings.auto_sleep
            else None
        )
        self.awake_schedule = (
            AwakeSchedule(self, "AwakeSchedule", switch=self.switch, settings=settings)
            if settings.wake_schedule
            else None
        )

        # Literal names, not the endpoint's attributes: both stay while the endpoint sleeps.
        self.endpoint_name_output = CfnOutput(self, "EndpointName", value=self.serving.endpoint_name)
        self.prefix_output = CfnOutput(self, "ModelPrefix", value=settings.model_prefix)
        ssm.StringParameter(
            self,
            "EndpointNameParameter",
            parameter_name=f"{settings.ssm_prefix}/{ENDPOINT_NAME_PARAMETER}",
            string_value=self.serving.endpoint_name,
            description="Name of this stage's multi-model endpoint (absent while the endpoint stack is destroyed; "
            "the endpoint itself is absent while the stage sleeps)",
        )
