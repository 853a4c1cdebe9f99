"""Self-mutating CDK Pipelines pipeline: source -> synth (setup, tests, cdk synth) -> stages -> smoke test."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from aws_cdk import Acknowledgment, Duration, Environment, RemovalPolicy, Stack, Token, Validations
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_codepipeline as codepipeline
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import pipelines
from constructs import Construct

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

    They expect the archive `$TARGET_MODEL` to exist under the model prefix (see docs/deploy.md): a missing
    archive fails the stage with a hint instead of passing without having tested anything.
    """
    return [
        "aws --version",
        "aws sagemaker-runtime invoke-endpoint --endpoint-name \"$ENDPOINT_NAME\" --target-model \"$TARGET_MODEL\""
        " --content-type application/json --accept application/json --cli-binary-format raw-in-base64-out"
        f" --cli-read-timeout 90 --body '{SMOKE_TEST_BODY}' response.json"
        " || { echo \"Smoke test failed. Is $TARGET_MODEL uploaded under $MODEL_DATA_URL? See docs/deploy.md\";"
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
            scope, construct_id, description="CDK Pipelines pipeline of the multi-model endpoint", **kwargs  # type: ignore[arg-type]
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
            lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(90), noncurrent_version_expiration=Duration.days(7))],
        )
        Validations.of(access_logs).acknowledge(
            Acknowledgment(
                id="AwsSolutions-S1",
                reason="This is the access-log destination itself; logging it to itself would loop.",
            )
        )
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
            lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(30), noncurrent_version_expiration=Duration.days(1))],
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
        """Acknowledge cdk-nag findings on resources CDK Pipelines generates and we cannot configure."""
        Validations.of(self).acknowledge(
            Acknowledgment(
                id="AwsSolutions-IAM5[Resource::*]",
                reason="CDK Pipelines' generated roles: codebuild:CreateReportGroup/CreateReport and "
                "the CodeBuild log streams are per-build names, and sts:AssumeRole targets the bootstrap "
                "roles by tag condition; the pipeline cannot scope these further.",
            ),
            Acknowledgment(
                id="AwsSolutions-CB4",
                reason="CodeBuild projects of CDK Pipelines encrypt their artifacts with the pipeline's "
                "customer-managed artifact key through the artifact bucket.",
            ),
        )


def _resolved_or_none(value: str) -> str | None:
    """`value` if known at synth, else None (an env-agnostic stack's account/region are tokens)."""
    return None if Token.is_unresolved(value) else value
