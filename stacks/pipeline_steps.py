"""What the pipeline does after deploying a stage: a smoke test of the endpoint, and real termination protection.

Both steps run on CodeBuild in the pipeline's account and act in the stage's account and region through one role
there, `StagePostDeployRole`, which the stage's endpoint stack creates. Same account or another, one code path:
the step writes an AWS CLI profile that assumes the role, and every call names the stage's region.

Termination protection: CloudFormation deploy actions (what CDK Pipelines deploys with) ignore a stack's
`terminationProtection`, which only `cdk deploy` applies (aws/aws-cdk#17871, #30405). The protection step applies it
with `aws cloudformation update-termination-protection` to every stack of the stage whose `termination_protection`
is True. It only ever enables protection: a stack that should lose it is unprotected by hand (README).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from aws_cdk import Acknowledgment, CfnOutput, Stack, Validations, pipelines
from aws_cdk import aws_iam as iam
from constructs import Construct

from mme.aws.names import ASLEEP
from stacks.nag import nag_resource
from stacks.settings import SettingsError

#: The smoke test's request: the demo sentiment model's input contract.
SMOKE_TEST_BODY = '{"input_text": "I love this"}'
#: Logical ID of the post-deploy role in the endpoint stack. Pinned: the role's generated name starts with
#: `<stack name>-<this>-`, the only part of it the pipeline's policy can name at synth (`role_arn_pattern`).
POST_DEPLOY_ROLE_LOGICAL_ID = "PostDeployRole"
#: CloudFormation names a role created without RoleName `<stack name>-<logical id>-<13 random characters>`; IAM
#: role names have at most 64 characters, and when the whole is longer CloudFormation shortens the first two parts,
#: which would no longer match `role_arn_pattern`. (The AWS::IAM::Role reference only says CloudFormation
#: "generates a unique physical ID"; the format is what it does in practice, hence the synth check below.)
MAX_ROLE_NAME_PREFIX_LENGTH = 64 - len("-") - 13
#: The AWS CLI profile the steps write: the post-deploy role, assumed with the CodeBuild project's credentials.
STAGE_PROFILE = "stage"


@dataclass(frozen=True)
class StageTarget:
    """Where a stage's stacks live, as the pipeline's steps must name it.

    `account` and `partition` may be tokens of the pipeline's stack (a stage in the pipeline's own, env-agnostic,
    environment); `region` is the literal region or None for "the pipeline's region".
    """

    account: str
    region: str | None
    partition: str

    @property
    def region_argument(self) -> str:
        """The value of `--region` in a step's commands: the literal region, else CodeBuild's (the pipeline's)."""
        # CodeBuild sets AWS_DEFAULT_REGION to the region the build runs in (CodeBuild user guide, "Environment
        # variables in build environments"); a stage without a known region deploys in the pipeline's region.
        return shlex.quote(self.region) if self.region else '"$AWS_DEFAULT_REGION"'


class StagePostDeployRole(Construct):
    """The role the pipeline's post-deploy steps assume in a stage's target account.

    Props:
        pipeline_account: the account trusted to assume it (the pipeline's; possibly the stage's own). Which
            principals there may do so is up to that account's IAM policies: the pipeline grants sts:AssumeRole on
            it to its two post-deploy CodeBuild roles only (`role_arn_pattern`).
        endpoint_name: the endpoint the smoke test may invoke (sagemaker:InvokeEndpoint on it alone), or None when
            the stage has no smoke test.
        switch_parameter: the stage's sleep switch, which the smoke test reads (ssm:GetParameter on it alone) to
            skip a sleeping endpoint; with `endpoint_name`.
        protected_stacks: the stage's stacks with `termination_protection`; the role may enable it on each, and on
            nothing else (cloudformation:UpdateTerminationProtection).

    Must be created directly in a stack (the stage's endpoint stack). Its name is generated, so two things are
    needed: the pipeline's IAM policy names the role at synth, when only the name's start is known (the CfnRole's
    logical ID is pinned to `POST_DEPLOY_ROLE_LOGICAL_ID`, so it is `<stack name>-PostDeployRole-`, and synth fails
    when that leaves CloudFormation no room for its suffix); the step needs the exact ARN, which only the deployed
    stack knows, and reads it from the output `PostDeployRoleArn` (`arn_output`, via `env_from_cfn_outputs`). A
    fixed role name would avoid both but is one more physical name to collide on (a retained or hand-made role).
    Exposes `role` and `arn_output`.
    """

    def __init__(
        self,
        scope: Stack,
        construct_id: str,
        *,
        pipeline_account: str,
        endpoint_name: str | None,
        switch_parameter: str | None = None,
        protected_stacks: Sequence[Stack],
    ) -> None:
        super().__init__(scope, construct_id)
        prefix = f"{scope.stack_name}-{POST_DEPLOY_ROLE_LOGICAL_ID}"
        if len(prefix) > MAX_ROLE_NAME_PREFIX_LENGTH:
            longest = MAX_ROLE_NAME_PREFIX_LENGTH - len(POST_DEPLOY_ROLE_LOGICAL_ID) - 1
            raise SettingsError(
                f"stack name {scope.stack_name!r} is too long for the pipeline's post-deploy role: CloudFormation "
                f"names it '{prefix}-<13 characters>' within IAM's 64, so the stack name may have at most {longest} "
                "characters; shorten the stage name"
            )
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.AccountPrincipal(pipeline_account),
            description="Assumed by the pipeline's post-deploy steps: smoke test and termination protection",
        )
        cfn_role = self.role.node.default_child
        assert isinstance(cfn_role, iam.CfnRole)
        cfn_role.override_logical_id(POST_DEPLOY_ROLE_LOGICAL_ID)
        if endpoint_name is not None:
            self.role.add_to_policy(
                iam.PolicyStatement(
                    sid="InvokeTheStageEndpoint",
                    actions=["sagemaker:InvokeEndpoint"],
                    # Endpoint ARNs are lower-case whatever the endpoint name's case.
                    resources=[
                        scope.format_arn(service="sagemaker", resource="endpoint", resource_name=endpoint_name.lower())
                    ],
                )
            )
        if endpoint_name is not None and switch_parameter is not None:
            self.role.add_to_policy(
                iam.PolicyStatement(
                    sid="ReadTheSleepSwitch",
                    actions=["ssm:GetParameter"],
                    resources=[
                        scope.format_arn(
                            service="ssm", resource="parameter", resource_name=switch_parameter.lstrip("/")
                        )
                    ],
                )
            )
        stack_arns = [stack_arn(scope, stack.stack_name) for stack in protected_stacks]
        if stack_arns:
            self.role.add_to_policy(
                iam.PolicyStatement(
                    sid="ProtectTheStageStacks",
                    actions=["cloudformation:UpdateTerminationProtection"],
                    resources=stack_arns,
                )
            )
            policy = self.role.node.find_child("DefaultPolicy").node.default_child
            assert isinstance(policy, iam.CfnPolicy)
            Validations.of(policy).acknowledge(
                *(
                    Acknowledgment(
                        id=f"AwsSolutions-IAM5[Resource::{nag_resource(policy, arn)}]",
                        reason="One stack, named in full: CloudFormation appends a generated id to every stack ARN "
                        "(stack/<name>/<id>). Only cloudformation:UpdateTerminationProtection is allowed on it.",
                    )
                    for arn in stack_arns
                )
            )
        self.arn_output = CfnOutput(
            self,
            "Arn",
            value=self.role.role_arn,
            description="The role the pipeline's post-deploy steps assume in this stage's account",
        )
        self.arn_output.override_logical_id(f"{POST_DEPLOY_ROLE_LOGICAL_ID}Arn")


def stack_arn(scope: Stack, stack_name: str) -> str:
    """ARN of every stack named `stack_name` in `scope`'s account and region (`stack/<name>/<generated id>`)."""
    return scope.format_arn(service="cloudformation", resource="stack", resource_name=f"{stack_name}/*")


def role_arn_pattern(target: StageTarget, endpoint_stack_name: str) -> str:
    """ARN pattern of the post-deploy role of the endpoint stack `endpoint_stack_name` in `target`'s account."""
    return f"arn:{target.partition}:iam::{target.account}:role/{endpoint_stack_name}-{POST_DEPLOY_ROLE_LOGICAL_ID}-*"


def assume_stage_role_commands(target: StageTarget) -> list[str]:
    """Commands that write the `STAGE_PROFILE` profile: the role in `$STAGE_ROLE_ARN`, from the build's credentials.

    `credential_source = EcsContainer` makes the CLI assume `role_arn` with the credentials of the container
    credential provider, which reads AWS_CONTAINER_CREDENTIALS_RELATIVE_URI (AWS CLI user guide, "Configuration and
    credential file settings": credential_source; AWS SDKs and Tools reference guide, "Container credential
    provider"). CodeBuild serves the project role's credentials that way; its list of build environment variables
    does not name that variable, so the first command fails the step with a plain message if it is ever missing.
    """
    profile = f"--profile {STAGE_PROFILE}"
    return [
        'test -n "${AWS_CONTAINER_CREDENTIALS_RELATIVE_URI:-}" || { echo "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI is'
        ' not set: this build has no container credentials to assume the stage role with"; exit 1; }',
        f'aws configure set role_arn "$STAGE_ROLE_ARN" {profile}',
        f"aws configure set credential_source EcsContainer {profile}",
        f"aws configure set role_session_name mme-pipeline {profile}",
        f"aws sts get-caller-identity {profile} --region {target.region_argument} --query Arn --output text",
    ]


def smoke_test_commands(target: StageTarget) -> list[str]:
    """Shell commands that invoke the endpoint once with `$TARGET_MODEL`, in the stage, and check the answer is JSON.

    They expect the archive `$TARGET_MODEL` to exist under the model prefix (README, "Deploying to AWS"): a missing
    archive fails the stage with a hint instead of passing without having tested anything. A stage whose switch
    (`$SWITCH_PARAMETER`) says "asleep" has no endpoint by design: the test is skipped with a line saying so, and the
    deploy succeeds without waking it. One command, so the skip cannot depend on how CodeBuild runs the next ones.
    """
    invoke = (
        f"aws sagemaker-runtime invoke-endpoint --profile {STAGE_PROFILE} --region {target.region_argument}"
        ' --endpoint-name "$ENDPOINT_NAME" --target-model "$TARGET_MODEL"'
        " --content-type application/json --accept application/json --cli-binary-format raw-in-base64-out"
        f" --cli-read-timeout 90 --body '{SMOKE_TEST_BODY}' response.json"
        ' || { echo "Smoke test failed. Is $TARGET_MODEL uploaded under $MODEL_DATA_URL? See the README";'
        " exit 1; }"
    )
    check = "cat response.json && python3 -c 'import json; json.load(open(\"response.json\"))'"
    return [
        "aws --version",
        *assume_stage_role_commands(target),
        f"STATE=$(aws ssm get-parameter --profile {STAGE_PROFILE} --region {target.region_argument}"
        ' --name "$SWITCH_PARAMETER" --query Parameter.Value --output text)'
        f' && if [ "$STATE" = {ASLEEP} ]; then echo "The stage sleeps ($SWITCH_PARAMETER is {ASLEEP}): no endpoint'
        f' to test, smoke test skipped; mme wake wakes it"; else {{ {invoke}; }} && {check}; fi',
    ]


def termination_protection_commands(target: StageTarget, stack_names: Sequence[str]) -> list[str]:
    """Shell commands that enable termination protection on each of `stack_names`, in the stage."""
    return [
        "aws --version",
        *assume_stage_role_commands(target),
        *(
            "aws cloudformation update-termination-protection --enable-termination-protection"
            f" --stack-name {shlex.quote(name)} --region {target.region_argument} --profile {STAGE_PROFILE}"
            for name in stack_names
        ),
    ]


def smoke_test_step(
    step_id: str,
    *,
    target: StageTarget,
    role: StagePostDeployRole,
    endpoint_stack_name: str,
    endpoint_name_output: CfnOutput,
    target_model: str,
    model_data_url: str,
    switch_parameter: str,
) -> pipelines.CodeBuildStep:
    """The post-deploy step that invokes the stage's endpoint through `role` (skipped while the stage sleeps)."""
    return pipelines.CodeBuildStep(
        step_id,
        env_from_cfn_outputs={"ENDPOINT_NAME": endpoint_name_output, "STAGE_ROLE_ARN": role.arn_output},
        env={"TARGET_MODEL": target_model, "MODEL_DATA_URL": model_data_url, "SWITCH_PARAMETER": switch_parameter},
        commands=smoke_test_commands(target),
        role_policy_statements=[_assume(target, endpoint_stack_name)],
    )


def termination_protection_step(
    step_id: str,
    *,
    target: StageTarget,
    role: StagePostDeployRole,
    endpoint_stack_name: str,
    stack_names: Sequence[str],
) -> pipelines.CodeBuildStep:
    """The post-deploy step that enables termination protection on `stack_names` through `role`."""
    return pipelines.CodeBuildStep(
        step_id,
        env_from_cfn_outputs={"STAGE_ROLE_ARN": role.arn_output},
        commands=termination_protection_commands(target, stack_names),
        role_policy_statements=[_assume(target, endpoint_stack_name)],
    )


def _assume(target: StageTarget, endpoint_stack_name: str) -> iam.PolicyStatement:
    return iam.PolicyStatement(actions=["sts:AssumeRole"], resources=[role_arn_pattern(target, endpoint_stack_name)])
