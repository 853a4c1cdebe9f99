"""Sleep and wake without drift: the stage's switch conditions the endpoint, and idle auto-sleep flips it.

A multi-model endpoint cannot scale to zero, and deleting a CloudFormation-managed endpoint behind CloudFormation's
back leaves the stack drifted and the next deploy broken. Instead the endpoint stack reads the stage's switch
(`<ssm_prefix>/endpoint-state`, created by the store stack) as an SSM-typed parameter, and the endpoint, its
autoscaling and its alarms carry the condition "awake". Sleep and wake are stack updates with the previous
template (`mme.aws.endpoint_state`); what stays while asleep costs nothing per hour (model, endpoint config, role,
image, log group, dashboard, functions).

CloudFormation resolves an SSM-typed parameter's default, the switch's name, on every create and update ("Specify
existing resources at runtime with CloudFormation-supplied parameter types", CloudFormation user guide), and a deploy
that passes no value for a parameter uses its default (API reference, `Parameter`): `cdk deploy` and the pipeline
therefore read the switch as it is, and never wake a sleeping endpoint by accident.
"""

from __future__ import annotations

import json
from pathlib import Path

from aws_cdk import (
    Acknowledgment,
    ArnFormat,
    CfnCondition,
    CfnParameter,
    CfnResource,
    Duration,
    Fn,
    IgnoreMode,
    Stack,
    Validations,
)
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_scheduler as scheduler
from constructs import Construct, IConstruct

from mme.aws.names import ASLEEP, AWAKE, ENDPOINT_STATE_PARAMETER, KEEP_AWAKE_PARAMETER
from stacks.endpoint_scaling import FUNCTION_RUNTIME, skip_function_checks
from stacks.multi_model_endpoint import MultiModelEndpoint, stack_log_group
from stacks.nag import nag_resource
from stacks.settings import StageSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Logical ID of the stack parameter that reads the switch (pinned: `mme` passes it by name on every sleep/wake).
SWITCH_PARAMETER_LOGICAL_ID = "EndpointState"
AWAKE_CONDITION_LOGICAL_ID = "EndpointAwake"
#: The code of the idle and schedule functions: these files of the repository and nothing else (boto3 only).
STATE_FUNCTION_FILES = ("mme/__init__.py", "mme/aws/__init__.py", "mme/aws/names.py", "mme/aws/endpoint_state.py",
                        "mme/aws/idle_sleep.py", "mme/aws/scheduled_state.py")  # fmt: skip
IDLE_FUNCTION_HANDLER = "mme.aws.idle_sleep.handler"
SCHEDULE_FUNCTION_HANDLER = "mme.aws.scheduled_state.handler"
#: Period of the idle alarm's datapoints; `idle_minutes` is a whole number of them.
IDLE_PERIOD_MINUTES = 5


class EndpointSwitch(Construct):
    """The stack parameter reading the stage's switch, and the condition "awake" for what exists only while awake.

    Props:
        ssm_prefix: the stage's SSM prefix; the switch is `<ssm_prefix>/endpoint-state`, and the keep-awake mark of
            its wake schedule `<ssm_prefix>/keep-awake`.

    Exposes `parameter`, `awake` (the condition) and `switch_parameter`; `only_while_awake(...)` applies it.
    """

    def __init__(self, scope: Construct, construct_id: str, *, ssm_prefix: str) -> None:
        super().__init__(scope, construct_id)
        self.switch_parameter = f"{ssm_prefix}/{ENDPOINT_STATE_PARAMETER}"
        self.keep_awake_parameter = f"{ssm_prefix}/{KEEP_AWAKE_PARAMETER}"
        self.parameter = CfnParameter(
            Stack.of(self),
            SWITCH_PARAMETER_LOGICAL_ID,
            type="AWS::SSM::Parameter::Value<String>",
            default=self.switch_parameter,
            description=f"SSM parameter holding '{AWAKE}' or 'asleep' (mme sleep / mme wake flip it)",
        )
        self.awake = CfnCondition(self, "Awake", expression=Fn.condition_equals(self.parameter.value_as_string, AWAKE))
        self.awake.override_logical_id(AWAKE_CONDITION_LOGICAL_ID)

    def only_while_awake(self, *constructs: IConstruct) -> None:
        """Give each construct's CloudFormation resource the condition "awake"."""
        for construct in constructs:
            resource = construct if isinstance(construct, CfnResource) else construct.node.default_child
            assert isinstance(resource, CfnResource), construct
            resource.cfn_options.condition = self.awake


class StateFunction(Construct):
    """A function that changes the stage's state through its own stack (`mme.aws.endpoint_state`).

    Props:
        switch: the stage's `EndpointSwitch`.
        handler: the Python handler in `STATE_FUNCTION_FILES`.
        description: what it is for.
        environment: variables beyond STACK_NAME, SWITCH_PARAMETER and KEEP_AWAKE_PARAMETER.
        write_keep_awake: whether it may write the keep-awake marker (it may always read it).
        log_retention_days: retention of its log group.

    It may flip the switch, read (and write, if asked) the marker, and update this stack only, with the deploy role
    CloudFormation already uses for it. Exposes `function` and `role` (to add what else it needs).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        switch: EndpointSwitch,
        handler: str,
        description: str,
        environment: dict[str, str],
        write_keep_awake: bool,
        log_retention_days: int,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        log_group = stack_log_group(self, "Logs", retention_days=log_retention_days)
        self.role = iam.Role(
            self, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"), description=description
        )
        self.function = lambda_.Function(
            self,
            "Function",
            runtime=FUNCTION_RUNTIME,
            handler=handler,
            code=lambda_.Code.from_asset(
                str(REPO_ROOT), exclude=state_function_excludes(), ignore_mode=IgnoreMode.DOCKER
            ),
            role=self.role,
            log_group=log_group,
            timeout=Duration.minutes(1),
            memory_size=256,
            environment={
                "STACK_NAME": stack.stack_name,
                "SWITCH_PARAMETER": switch.switch_parameter,
                "KEEP_AWAKE_PARAMETER": switch.keep_awake_parameter,
                **environment,
            },
            description=description,
        )
        skip_function_checks(self.function)
        role = self.role
        role.add_to_policy(
            iam.PolicyStatement(
                sid="WriteFunctionLogs",
                actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                resources=[log_group.log_group_arn],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="FlipTheSwitch",
                actions=["ssm:GetParameter", "ssm:PutParameter"],
                resources=[_parameter_arn(stack, switch.switch_parameter)],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ReadKeepAwake" if not write_keep_awake else "WriteKeepAwake",
                actions=["ssm:GetParameter", *(["ssm:PutParameter"] if write_keep_awake else [])],
                resources=[_parameter_arn(stack, switch.keep_awake_parameter)],
            )
        )
        stack_arn = stack.format_arn(service="cloudformation", resource="stack", resource_name=f"{stack.stack_name}/*")
        role.add_to_policy(
            iam.PolicyStatement(
                sid="UpdateThisStack",
                actions=["cloudformation:DescribeStacks", "cloudformation:UpdateStack"],
                resources=[stack_arn],
            )
        )
        # UpdateStack runs as the role the stack was deployed with (the CDK bootstrap's CloudFormation execution
        # role), and updating a stack that has a service role takes iam:PassRole on it (CloudFormation user guide,
        # "CloudFormation service role").
        exec_roles = stack.format_arn(
            service="iam",
            region="",
            resource="role",
            resource_name=f"cdk-*-cfn-exec-role-{stack.account}-{stack.region}",
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="PassTheDeployRole",
                actions=["iam:PassRole"],
                resources=[exec_roles],
                conditions={"StringEquals": {"iam:PassedToService": "cloudformation.amazonaws.com"}},
            )
        )
        Validations.of(role).acknowledge(
            Acknowledgment(
                id=f"AwsSolutions-IAM5[Resource::{nag_resource(role, stack_arn)}]",
                reason="A stack's ARN ends in an ID CloudFormation generates; the name fixes it to this stack.",
            ),
            Acknowledgment(
                id=f"AwsSolutions-IAM5[Resource::{nag_resource(role, exec_roles)}]",
                reason="The CDK bootstrap's CloudFormation execution role of this account and region (its qualifier "
                "is chosen at bootstrap), passable to CloudFormation only.",
            ),
        )


class IdleSleep(Construct):
    """An alarm on zero invocations for `idle_minutes`, whose action is a function that puts the endpoint to sleep.

    Props:
        endpoint: the endpoint to watch.
        switch: the stage's `EndpointSwitch` (the alarm exists only while awake).
        settings: `idle_minutes`, `log_retention_days`.

    Beyond a `StateFunction`'s rights, the function may read only this endpoint and reset only this alarm. Exposes
    `alarm`, `alarm_name` and `function`.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        endpoint: MultiModelEndpoint,
        switch: EndpointSwitch,
        settings: StageSettings,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        state_function = StateFunction(
            self,
            "Function",
            switch=switch,
            handler=IDLE_FUNCTION_HANDLER,
            description=f"Puts {endpoint.endpoint_name} to sleep through its stack when it has been idle",
            environment={"ENDPOINT_NAME": endpoint.endpoint_name},
            write_keep_awake=False,
            log_retention_days=settings.log_retention_days,
        )
        self.function = state_function.function
        periods = settings.idle_minutes // IDLE_PERIOD_MINUTES
        self.alarm_name = f"{stack.stack_name}-idle"
        self.alarm = cloudwatch.Alarm(
            self,
            "Alarm",
            # Named, so the function's right to reset it can name it without a reference back to the alarm (the
            # alarm's action already refers to the function).
            alarm_name=self.alarm_name,
            metric=endpoint.variant_metric("Invocations", statistic="Sum").with_(
                period=Duration.minutes(IDLE_PERIOD_MINUTES)
            ),
            threshold=1,
            comparison_operator=cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
            evaluation_periods=periods,
            datapoints_to_alarm=periods,
            # SageMaker publishes no datapoint for a period without invocations: missing data is idleness.
            treat_missing_data=cloudwatch.TreatMissingData.BREACHING,
            alarm_description=f"No invocations of {endpoint.endpoint_name} for {settings.idle_minutes} minutes: "
            "the idle function puts it to sleep (`mme wake` or `mme invoke --wake` wakes it)",
        )
        self.alarm.add_alarm_action(cw_actions.LambdaAction(self.function))
        # The permission CloudWatch gets to invoke the function names the alarm, so it comes and goes with it.
        permissions = [c for c in self.function.node.children if isinstance(c, lambda_.CfnPermission)]
        switch.only_while_awake(self.alarm, *permissions)
        state_function.role.add_to_policy(
            iam.PolicyStatement(
                sid="ReadTheEndpoint",
                actions=["sagemaker:DescribeEndpoint"],
                resources=[
                    stack.format_arn(
                        service="sagemaker", resource="endpoint", resource_name=endpoint.endpoint_name.lower()
                    )
                ],
            )
        )
        state_function.role.add_to_policy(
            iam.PolicyStatement(
                sid="ResetTheIdleAlarm",
                actions=["cloudwatch:SetAlarmState"],
                resources=[
                    stack.format_arn(
                        service="cloudwatch",
                        resource="alarm",
                        resource_name=self.alarm_name,
                        arn_format=ArnFormat.COLON_RESOURCE_NAME,
                    )
                ],
            )
        )


class AwakeSchedule(Construct):
    """Keep the endpoint awake on a schedule: EventBridge Scheduler wakes it at `wake_schedule` and puts it to sleep
    at `sleep_schedule` (in `schedule_timezone`) through a `StateFunction`, which also marks the stage as kept awake
    in between so idle auto-sleep leaves it alone.

    Props:
        switch: the stage's `EndpointSwitch`.
        settings: `wake_schedule`, `sleep_schedule`, `schedule_timezone`, `log_retention_days`.

    The schedules exist while the stage sleeps too (the wake must run then). A change that finds the stack being
    updated fails, and the scheduler retries it for up to an hour. Exposes `function` and `schedules` by state.
    """

    def __init__(self, scope: Construct, construct_id: str, *, switch: EndpointSwitch, settings: StageSettings) -> None:
        super().__init__(scope, construct_id)
        state_function = StateFunction(
            self,
            "Function",
            switch=switch,
            handler=SCHEDULE_FUNCTION_HANDLER,
            description=f"Wakes and sleeps {Stack.of(self).stack_name}'s endpoint on its schedule",
            environment={},
            write_keep_awake=True,
            log_retention_days=settings.log_retention_days,
        )
        self.function = state_function.function
        invoker = iam.Role(
            self,
            "SchedulerRole",
            assumed_by=iam.ServicePrincipal(
                "scheduler.amazonaws.com", conditions={"StringEquals": {"aws:SourceAccount": Stack.of(self).account}}
            ),
            description="Lets EventBridge Scheduler start the endpoint's schedule function, and nothing else",
        )
        # The function itself, not `grant_invoke`'s extra "<arn>:*" (every version and alias): the schedule names it.
        invoker.add_to_policy(
            iam.PolicyStatement(actions=["lambda:InvokeFunction"], resources=[self.function.function_arn])
        )
        self.schedules: dict[str, scheduler.CfnSchedule] = {}
        for state, expression in ((AWAKE, settings.wake_schedule), (ASLEEP, settings.sleep_schedule)):
            self.schedules[state] = scheduler.CfnSchedule(
                self,
                "Wake" if state == AWAKE else "Sleep",
                schedule_expression=expression,
                schedule_expression_timezone=settings.schedule_timezone,
                flexible_time_window=scheduler.CfnSchedule.FlexibleTimeWindowProperty(mode="OFF"),
                description=f"Puts the endpoint {state} ({expression}, {settings.schedule_timezone})",
                target=scheduler.CfnSchedule.TargetProperty(
                    arn=self.function.function_arn,
                    role_arn=invoker.role_arn,
                    input=json.dumps({"state": state}),
                    retry_policy=scheduler.CfnSchedule.RetryPolicyProperty(
                        maximum_event_age_in_seconds=3600, maximum_retry_attempts=185
                    ),
                ),
            )


def _parameter_arn(stack: Stack, name: str) -> str:
    return stack.format_arn(service="ssm", resource="parameter", resource_name=name.lstrip("/"))


def state_function_excludes() -> list[str]:
    """Docker-ignore rules that keep `STATE_FUNCTION_FILES` of the repository and nothing else."""
    return ["*", *[f"!{path}" for path in STATE_FUNCTION_FILES], "**/__pycache__", "**/*.pyc"]
