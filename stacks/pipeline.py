"""Self-mutating CDK Pipelines pipeline: source -> synth (setup, tests, cdk synth) -> stages -> smoke test."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from aws_cdk import (
    Acknowledgment,
    ArnFormat,
    Duration,
    Environment,
    RemovalPolicy,
    Stack,
    Token,
    Validations,
    pipelines,
)
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_codepipeline as codepipeline
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from stacks.endpoint import nag_resource
from stacks.model_store import skip_self_logging
from stacks.settings import PipelineSettings, StageSettings
from stacks.stage import ServingStage

REPO_ROOT = Path(__file__).resolve().parent.parent
#: The smoke test's request: the demo sentiment model's input contract.
SMOKE_TEST_BODY = '{"input_text": "I love this"}'
#: Commands of the synth step: exactly what a developer runs (Makefile), then the synth the pipeline deploys.
SYNTH_COMMANDS = ["make setup", "make test", "npx cdk synth"]


def cdk_cli_version() -> str:
    """The `aws-cdk` CLI version pinned in package.json; self-mutation runs the same CLI as developers."""
    package = json.loads((REPO_ROOT / "package.json").read_text())
    return str(package["devDependencies"]["aws-cdk"])


def smoke_test_commands() -> list[str]:
    """Shell commands that invoke the endpoint once with `$TARGET_MODEL` and check the answer is JSON.

    They expect the archive `$TARGET_MODEL` to exist under the model prefix (README, "Deploying to AWS"): a missing
    archive fails the stage with a hint instead of passing without having tested anything.
    """
    return [
        "aws --version",
        'aws sagemaker-runtime invoke-endpoint --endpoint-name "$ENDPOINT_NAME" --target-model "$TARGET_MODEL"'
        " --content-type application/json --accept application/json --cli-binary-format raw-in-base64-out"
        f" --cli-read-timeout 90 --body '{SMOKE_TEST_BODY}' response.json"
        ' || { echo "Smoke test failed. Is $TARGET_MODEL uploaded under $MODEL_DATA_URL? See the README";'
        " exit 1; }",
        "cat response.json",
        "python3 -c 'import json; json.load(open(\"response.json\"))'",
    ]


class PipelineStack(Stack):
    """The CDK Pipelines pipeline that deploys every stage in order.

    Props:
        pipeline: repository, branch and CodeStar connection ARN of the source.
        stages: stage settings in deployment order; a stage with `require_approval` waits for a manual approval,
            one with a `smoke_test_target_model` is followed by a smoke test.

    The artifact bucket is encrypted with a customer-managed, rotated key and logs its access. Self-mutation is
    on: a push that changes the pipeline updates it first, then redeploys the stages.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        pipeline: PipelineSettings,
        stages: Sequence[StageSettings],
        **kwargs: object,
    ) -> None:
        super().__init__(
            scope,
            construct_id,
            description="CDK Pipelines pipeline of the multi-model endpoint",
            **kwargs,  # type: ignore[arg-type]
        )
        self.artifact_key = kms.Key(
            self,
            "ArtifactKey",
            description="Encrypts the pipeline's artifacts",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.DESTROY,  # artifacts are rebuilt by every run; nothing to keep
            pending_window=Duration.days(7),
        )
        access_logs = s3.Bucket(
            self,
            "ArtifactAccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,  # log delivery cannot write to KMS-encrypted buckets
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[
                s3.LifecycleRule(expiration=Duration.days(90), noncurrent_version_expiration=Duration.days(7))
            ],
        )
        skip_self_logging(access_logs)
        self.artifact_bucket = s3.Bucket(
            self,
            "ArtifactBucket",
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.artifact_key,
            bucket_key_enabled=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,  # CodePipeline requires a versioned artifact store
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=access_logs,
            server_access_logs_prefix="artifacts/",
            lifecycle_rules=[
                s3.LifecycleRule(expiration=Duration.days(30), noncurrent_version_expiration=Duration.days(1))
            ],
        )

        source = pipelines.CodePipelineSource.connection(
            pipeline.repository,
            pipeline.branch,
            connection_arn=pipeline.connection_arn,
            trigger_on_push=True,
        )
        build_defaults = pipelines.CodeBuildOptions(
            build_environment=codebuild.BuildEnvironment(
                build_image=codebuild.LinuxBuildImage.STANDARD_7_0,
                compute_type=codebuild.ComputeType.MEDIUM,
            ),
            partial_build_spec=codebuild.BuildSpec.from_object(
                {"phases": {"install": {"runtime-versions": {"python": "3.11", "nodejs": "20"}}}}
            ),
            timeout=Duration.minutes(60),
        )
        synth = pipelines.CodeBuildStep(
            "Synth",
            input=source,
            commands=SYNTH_COMMANDS,
            primary_output_directory="cdk.out",
            env={"JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"},
        )
        self.pipeline = pipelines.CodePipeline(
            self,
            "Pipeline",
            synth=synth,
            artifact_bucket=self.artifact_bucket,
            pipeline_type=codepipeline.PipelineType.V2,
            self_mutation=True,
            cli_version=cdk_cli_version(),
            code_build_defaults=build_defaults,
            publish_assets_in_parallel=False,  # one image asset; one CodeBuild project is enough
        )

        self.stages: list[ServingStage] = []
        for settings in stages:
            # A stage without its own account/region deploys where the pipeline runs.
            env = Environment(
                account=settings.account or _resolved_or_none(self.account),
                region=settings.region or _resolved_or_none(self.region),
            )
            stage = ServingStage(self, settings.name.capitalize(), settings=settings, env=env)
            pre: list[pipelines.Step] = []
            if settings.require_approval:
                pre.append(pipelines.ManualApprovalStep(f"Approve{settings.name.capitalize()}"))
            post: list[pipelines.Step] = []
            if settings.smoke_test_target_model:
                post.append(self._smoke_test(stage))
            self.pipeline.add_stage(stage, pre=pre, post=post)
            self.stages.append(stage)

        # Build now so the generated CodeBuild projects and roles exist for the acknowledgements below.
        self.pipeline.build_pipeline()
        cfn_pipeline = self.pipeline.pipeline.node.default_child
        assert isinstance(cfn_pipeline, codepipeline.CfnPipeline)
        # Both findings are in CDK Pipelines' generated resource, not in anything we write: W3005, it lists the
        # role in DependsOn next to a GetAtt of it; E3703 (a style rule), it builds the deploy-role ARNs with
        # Fn::Join. Scoped to this one resource so the checks still run on everything else.
        cfn_pipeline.add_metadata("cfn-lint", {"config": {"ignore_checks": ["W3005", "E3703"]}})
        asset_policy = self.pipeline.node.try_find_child("Assets")
        docker_role = asset_policy.node.try_find_child("DockerRole") if asset_policy else None
        if docker_role is not None:
            cfn_policy = docker_role.node.find_child("DefaultPolicy").node.default_child
            assert isinstance(cfn_policy, iam.CfnPolicy)
            cfn_policy.add_metadata(
                "checkov",
                {
                    "skip": [
                        {
                            "id": "CKV_AWS_111",
                            "comment": "CDK Pipelines' shared asset-publishing role: codebuild:StartBuild/StopBuild on "
                            "the asset projects it generates after the role; no data write access.",
                        }
                    ]
                },
            )
        self._acknowledge_generated_resources()

    def _smoke_test(self, stage: ServingStage) -> pipelines.CodeBuildStep:
        settings = stage.settings
        endpoint_stack = stage.endpoint
        endpoint_arn = Stack.of(self).format_arn(
            service="sagemaker",
            resource="endpoint",
            # Endpoint ARNs are lower-case whatever the endpoint name's case.
            resource_name=endpoint_stack.serving.endpoint_name.lower(),
            account=settings.account or None,
            region=settings.region or None,
        )
        return pipelines.CodeBuildStep(
            f"SmokeTest{settings.name.capitalize()}",
            env_from_cfn_outputs={
                "ENDPOINT_NAME": endpoint_stack.endpoint_name_output,
            },
            env={
                "TARGET_MODEL": settings.smoke_test_target_model,
                "MODEL_DATA_URL": f"s3://<{stage.model_store.stack_name} ModelBucketName>/{settings.model_prefix}",
            },
            commands=smoke_test_commands(),
            role_policy_statements=[
                iam.PolicyStatement(actions=["sagemaker:InvokeEndpoint"], resources=[endpoint_arn]),
            ],
        )

    def _acknowledge_generated_resources(self) -> None:
        """Acknowledge cdk-nag findings on the roles CDK Pipelines generates, which it does not let us scope.

        Applied to the `CodePipeline` construct only, never to this stack: the stage stacks are children of this
        stack in the construct tree and must not inherit any of these.
        """
        artifacts = nag_resource(self, self.artifact_bucket.arn_for_objects("*"))
        acks = [
            Acknowledgment(
                id=f"AwsSolutions-IAM5[{finding}]",
                reason="CDK Pipelines grants its pipeline, source, build, self-mutation and step roles these "
                "wildcard actions on this pipeline's own artifact bucket and artifact key only "
                "(Bucket.grantReadWrite/Key.grantEncryptDecrypt); artifacts have generated keys.",
            )
            for finding in (
                "Action::s3:Abort*",
                "Action::s3:DeleteObject*",
                "Action::s3:GetBucket*",
                "Action::s3:GetObject*",
                "Action::s3:List*",
                "Action::kms:GenerateDataKey*",
                "Action::kms:ReEncrypt*",
                f"Resource::{artifacts}",
            )
        ]
        for project in self._codebuild_project_refs():
            log_group = self._nag_arn("logs", "log-group", f"/aws/codebuild/{project}")
            report_groups = self._nag_arn("codebuild", "report-group", f"{project}-*", "/")
            acks += [
                Acknowledgment(
                    id=f"AwsSolutions-IAM5[Resource::{log_group}:*]",
                    reason="CodeBuild writes one log stream per build, with a generated name, into this project's "
                    "own log group.",
                ),
                Acknowledgment(
                    id=f"AwsSolutions-IAM5[Resource::{report_groups}]",
                    reason="CodeBuild report groups of this project are created per report with the project's "
                    "name as prefix.",
                ),
            ]
        acks += [
            Acknowledgment(
                id="AwsSolutions-IAM5[Resource::*]",
                reason="Generated by CDK Pipelines: self-mutation needs cloudformation:DescribeStacks and "
                "s3:ListBucket on any stack/bucket the CLI inspects before deploying, and the shared asset role "
                "starts the asset CodeBuild projects generated after it; none of these grants data access.",
            ),
            Acknowledgment(
                id=f"AwsSolutions-IAM5[Resource::{nag_resource(self, f'arn:*:iam::{self.account}:role/*')}]",
                reason="Self-mutation assumes the CDK bootstrap deploy/lookup roles; CDK Pipelines restricts this "
                "statement with an iam:ResourceTag/aws-cdk:bootstrap-role condition.",
            ),
            Acknowledgment(
                id=f"AwsSolutions-IAM5[Resource::{self._nag_arn('logs', 'log-group', '/aws/codebuild/*')}]",
                reason="The shared asset-publishing role serves CodeBuild projects whose names CDK Pipelines "
                "generates after this role; it is limited to CodeBuild log groups.",
            ),
            Acknowledgment(
                id=f"AwsSolutions-IAM5[Resource::{self._nag_arn('codebuild', 'report-group', '*', '/')}]",
                reason="The shared asset-publishing role serves CodeBuild projects whose names CDK Pipelines "
                "generates after this role; it is limited to CodeBuild report groups.",
            ),
        ]
        Validations.of(self.pipeline).acknowledge(*acks)

    def _codebuild_project_refs(self) -> list[str]:
        """`Ref` tokens (project names) of the CodeBuild projects CDK Pipelines generated under the pipeline."""
        return [child.ref for child in self.pipeline.node.find_all() if isinstance(child, codebuild.CfnProject)]

    def _nag_arn(self, service: str, resource: str, name: str, separator: str = ":") -> str:
        """An ARN of this stack's account/region as cdk-nag prints it (partition/region/account may be tokens)."""
        arn_format = ArnFormat.COLON_RESOURCE_NAME if separator == ":" else ArnFormat.SLASH_RESOURCE_NAME
        return nag_resource(
            self, self.format_arn(service=service, resource=resource, resource_name=name, arn_format=arn_format)
        )


def _resolved_or_none(value: str) -> str | None:
    """`value` if known at synth, else None (an env-agnostic stack's account/region are tokens)."""
    return None if Token.is_unresolved(value) else value
