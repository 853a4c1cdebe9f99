"""Self-mutating CDK Pipelines pipeline: source -> synth (setup, tests, cdk synth) -> stages -> post-deploy steps."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from aws_cdk import Aws, DefaultStackSynthesizer, Duration, Environment, Stack, Token, pipelines
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_codepipeline as codepipeline
from aws_cdk import aws_s3 as s3
from constructs import Construct

from stacks.nag import nag_resource
from stacks.pipeline_artifacts import ArtifactReplicationStack, ArtifactStore, add_artifact_store
from stacks.pipeline_policies import (
    ArtifactGrantTargets,
    PipelineGrantExplainer,
    acknowledge_generated_policies,
    narrow_asset_roles,
)
from stacks.pipeline_steps import (
    StageTarget,
    role_arn_pattern,
    smoke_test_step,
    termination_protection_step,
)
from stacks.settings import PipelineSettings, SettingsError, StageSettings
from stacks.stage import ServingStage

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Commands of the synth step: exactly what a developer runs (Makefile), then the synth the pipeline deploys.
SYNTH_COMMANDS = ["make setup", "make test", "npx cdk synth"]


def cdk_cli_version() -> str:
    """The `aws-cdk` CLI version pinned in package.json; self-mutation runs the same CLI as developers."""
    package = json.loads((REPO_ROOT / "package.json").read_text())
    return str(package["devDependencies"]["aws-cdk"])


class PipelineStack(Stack):
    """The CDK Pipelines pipeline that deploys every stage in order.

    Props:
        pipeline: repository, branch and CodeStar connection ARN of the source.
        stages: stage settings in deployment order. A stage may name its own account and/or region; one with
            `require_approval` waits for a manual approval; after each deploy a step enables termination protection
            on the stage's protected stacks, and one with a `smoke_test_target_model` is smoke-tested. Both steps
            act through the stage's post-deploy role (stacks/pipeline_steps.py).

    Artifacts live in stores encrypted with customer-managed, rotated keys, which log their access: this stack's
    for the pipeline's region, and one `ArtifactReplicationStack` per other stage region (created here, next to
    this stack, which depends on them). Self-mutation is on: a push that changes the pipeline updates it first,
    then redeploys the stages.

    Raises `SettingsError` when a stage names an account or region while the pipeline's own is unknown at synth.
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
        self._check_environments(stages)
        self.artifact_store = add_artifact_store(self, description="Encrypts the pipeline's artifacts")
        self.artifact_key = self.artifact_store.key
        self.artifact_bucket = self.artifact_store.bucket

        self.stages: list[ServingStage] = []
        for settings in stages:
            # A stage without its own account/region deploys where the pipeline runs.
            env = Environment(
                account=settings.account or _resolved_or_none(self.account),
                region=settings.region or _resolved_or_none(self.region),
            )
            stage = ServingStage(
                self, settings.name.capitalize(), settings=settings, env=env, pipeline_account=self.account
            )
            self.stages.append(stage)
        self.replication_stacks = self._replication_stacks(scope)

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
        # CodePipeline takes either one artifact bucket or a bucket per region (this stack's region included).
        # Every store has a customer-managed key, and CDK's grants to another account's deploy role land in the
        # policies of the store's bucket and key: what `crossAccountKeys` provides, which only affects the buckets
        # CDK would create itself (none here).
        replication: dict[str, s3.IBucket] | None = None
        if self.replication_stacks:
            replication = {self.region: self.artifact_bucket}
            replication.update({s.region: s.store.bucket for s in self.replication_stacks})
        self.pipeline = pipelines.CodePipeline(
            self,
            "Pipeline",
            synth=synth,
            artifact_bucket=None if replication else self.artifact_bucket,
            cross_region_replication_buckets=replication,
            pipeline_type=codepipeline.PipelineType.V2,
            self_mutation=True,
            cli_version=cdk_cli_version(),
            code_build_defaults=build_defaults,
            publish_assets_in_parallel=False,  # one project per asset type is enough
        )
        for stage in self.stages:
            self._add_stage(stage)

        # Build now so the generated CodeBuild projects and roles exist for what follows.
        self.pipeline.build_pipeline()
        cfn_pipeline = self.pipeline.pipeline.node.default_child
        assert isinstance(cfn_pipeline, codepipeline.CfnPipeline)
        # Both findings are in CDK Pipelines' generated resource, not in anything we write: W3005, it lists the
        # role in DependsOn next to a GetAtt of it; E3703 (a style rule), it builds the deploy-role ARNs with
        # Fn::Join. Scoped to this one resource so the checks still run on everything else.
        cfn_pipeline.add_metadata("cfn-lint", {"config": {"ignore_checks": ["W3005", "E3703"]}})
        assets = self.pipeline.node.try_find_child("Assets")
        if assets is not None:
            narrow_asset_roles(assets)
        acknowledge_generated_policies(self.pipeline, self._grant_explainer())

    def _check_environments(self, stages: Sequence[StageSettings]) -> None:
        for settings in stages:
            for key, own in (("account", self.account), ("region", self.region)):
                if getattr(settings, key) and Token.is_unresolved(own):
                    raise SettingsError(
                        f"context key 'stages.{settings.name}.{key}' is set but the pipeline's own {key} is unknown "
                        f"at synth; allowed: a {key} only when the pipeline stack has one (run `cdk` with "
                        "credentials, which set CDK_DEFAULT_ACCOUNT and CDK_DEFAULT_REGION)"
                    )

    def _target(self, stage: ServingStage) -> StageTarget:
        settings = stage.settings
        region = settings.region or _resolved_or_none(self.region)
        return StageTarget(account=settings.account or self.account, region=region, partition=self.partition)

    def _replication_stacks(self, scope: Construct) -> list[ArtifactReplicationStack]:
        regions = sorted({s.settings.region for s in self.stages if s.settings.region} - {self.region})
        stacks = []
        for region in regions:
            deploy_roles = [
                _deploy_role_arn(stack)
                for stage in self.stages
                if stage.settings.region == region and stage.settings.account not in ("", self.account)
                for stack in (stage.model_store, stage.endpoint)
            ]
            stacks.append(
                ArtifactReplicationStack(
                    scope,
                    f"{self.node.id}-artifacts-{region}",
                    pipeline_stack=self,
                    region=region,
                    deploy_role_arns=sorted(set(deploy_roles)),
                )
            )
        return stacks

    def _add_stage(self, stage: ServingStage) -> None:
        settings = stage.settings
        name = settings.name.capitalize()
        pre: list[pipelines.Step] = []
        if settings.require_approval:
            pre.append(pipelines.ManualApprovalStep(f"Approve{name}"))
        post: list[pipelines.Step] = []
        role = stage.post_deploy_role
        assert role is not None  # the pipeline passes pipeline_account
        target = self._target(stage)
        protected = [s.stack_name for s in (stage.model_store, stage.endpoint) if s.termination_protection]
        if protected:
            post.append(
                termination_protection_step(
                    f"ProtectStacks{name}",
                    target=target,
                    role=role,
                    endpoint_stack_name=stage.endpoint.stack_name,
                    stack_names=protected,
                )
            )
        if settings.smoke_test_target_model:
            post.append(
                smoke_test_step(
                    f"SmokeTest{name}",
                    target=target,
                    role=role,
                    endpoint_stack_name=stage.endpoint.stack_name,
                    endpoint_name_output=stage.endpoint.endpoint_name_output,
                    target_model=settings.smoke_test_target_model,
                    model_data_url=f"s3://<{stage.model_store.stack_name} ModelBucketName>/{settings.model_prefix}",
                    switch_parameter=stage.endpoint.switch.switch_parameter,
                )
            )
        self.pipeline.add_stage(stage, pre=pre, post=post)

    def _grant_explainer(self) -> PipelineGrantExplainer:
        stores: list[tuple[str, ArtifactStore]] = [(self.region, self.artifact_store)]
        stores += [(s.region, s.store) for s in self.replication_stacks]
        buckets: dict[str, str] = {}
        keys: dict[str, str] = {}
        aliased_keys: dict[str, str] = {}
        for region, store in stores:
            label = f"the artifact bucket of {_describe_region(region)}"
            buckets[nag_resource(self, store.bucket.bucket_arn)] = label
            buckets[nag_resource(self, store.bucket.arn_for_objects("*"))] = label
            if store.alias_name is None:
                keys[nag_resource(self, store.key.key_arn)] = f"the artifact key of {_describe_region(region)}"
            else:
                pattern = Stack.of(store.key).format_arn(service="kms", resource="key", resource_name="*")
                aliased_keys[nag_resource(self, pattern)] = store.alias_name
        projects = {
            nag_resource(self, project.ref): f"the CodeBuild project {project.node.path}"
            for project in self.pipeline.node.find_all()
            if isinstance(project, codebuild.CfnProject)
        }
        stage_roles = {
            nag_resource(self, role_arn_pattern(self._target(stage), stage.endpoint.stack_name)): stage.settings.name
            for stage in self.stages
        }
        return PipelineGrantExplainer(
            artifacts=ArtifactGrantTargets(buckets=buckets, keys=keys, aliased_keys=aliased_keys),
            projects=projects,
            account=nag_resource(self, self.account),
            stage_roles=stage_roles,
        )


def _deploy_role_arn(stack: Stack) -> str:
    """The CDK bootstrap deploy role CDK Pipelines deploys `stack` with (its CloudFormation actions' role)."""
    synthesizer = stack.synthesizer
    assert isinstance(synthesizer, DefaultStackSynthesizer), "stage stacks use the default synthesizer"
    return synthesizer.deploy_role_arn.replace("${AWS::Partition}", Aws.PARTITION)


def _describe_region(region: str) -> str:
    return "the pipeline's region" if Token.is_unresolved(region) else region


def _resolved_or_none(value: str) -> str | None:
    """`value` if known at synth, else None (an env-agnostic stack's account/region are tokens)."""
    return None if Token.is_unresolved(value) else value
