"""The stateless serving side: image, execution role, MultiModel model, endpoint config, endpoint, autoscaling.

The alpha L2 `Model` cannot express MultiModel mode, so `MultiModelEndpoint` wraps the L1 resources. Destroying
`EndpointStack` stops every per-hour cost and leaves the model store untouched.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from aws_cdk import (
    Acknowledgment,
    ArnFormat,
    CfnOutput,
    Duration,
    IgnoreMode,
    Stack,
    Validations,
)
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_sagemaker as sagemaker
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from stacks.model_store import ModelStoreRef
from stacks.monitoring import EndpointMonitoring
from stacks.settings import SettingsError, StageSettings

#: Repository root: the Docker build context (container/Dockerfile COPYs container/ and handler/ from it).
REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = "container/Dockerfile"
#: The only folders of the repository sent to every image build (no .venv, node_modules, cdk.out, tests); a stage's
#: default tokenizer folder is added to them (see `image_excludes`).
IMAGE_SOURCES = ("container", "handler")
#: container/Dockerfile's build argument naming the default tokenizer folder, relative to the build context; the
#: Dockerfile copies it to `IMAGE_DEFAULT_TOKENIZER_DIR`. Unset, it copies the empty container/default-tokenizer.
DEFAULT_TOKENIZER_BUILD_ARG = "DEFAULT_TOKENIZER"
#: A folder holding one of these is a tokenizer: the files the handler looks for (handler/model.py).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
VARIANT_NAME = "AllTraffic"
#: SageMaker publishes instance metrics (MemoryUtilization, ...) and accepts container metrics under this namespace.
ENDPOINT_METRICS_NAMESPACE = "/aws/sagemaker/Endpoints"
ENDPOINT_NAME_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")


class MultiModelEndpoint(Construct):
    """A SageMaker multi-model endpoint serving every archive under the store's model prefix.

    Props:
        store: the model store; the role may read only `<model_prefix>*` and (if capture is on) write the capture
            prefix.
        settings: instance type/count, volume, timeouts, cache, capture, autoscaling and container tunables.
        endpoint_name: physical endpoint name. The only fixed physical name here, because the execution role must
            name the endpoint's log group before the endpoint exists (see `EndpointStack`).

    Exposes `endpoint`, `endpoint_name`, `role`, `image`, `scalable_target`.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        store: ModelStoreRef,
        settings: StageSettings,
        endpoint_name: str,
    ) -> None:
        super().__init__(scope, construct_id)
        if not ENDPOINT_NAME_PATTERN.match(endpoint_name):
            raise SettingsError(
                f"endpoint name {endpoint_name!r} (from the stack name) is not a valid SageMaker endpoint name; "
                "allowed: <= 63 characters of letters, digits and '-'; shorten the stage name"
            )
        check_default_tokenizer(settings)
        stack = Stack.of(self)
        self.endpoint_name = endpoint_name

        self.image = ecr_assets.DockerImageAsset(
            self,
            "Image",
            directory=str(REPO_ROOT),
            file=DOCKERFILE,
            platform=ecr_assets.Platform.LINUX_AMD64,
            # Baked in, not fetched at start: the model runs with network isolation, and the tokenizer is then
            # versioned with the image. A build argument is part of the asset hash, so another folder is a new image.
            build_args=(
                {DEFAULT_TOKENIZER_BUILD_ARG: settings.default_tokenizer} if settings.default_tokenizer else None
            ),
            exclude=image_excludes(settings),
            ignore_mode=IgnoreMode.DOCKER,
        )

        self.role = iam.Role(
            self,
            "ExecutionRole",
            assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
            description="SageMaker execution role of one multi-model endpoint (read models, pull image, logs)",
        )
        self._grant_least_privilege(store=store, settings=settings, stack=stack)

        model = sagemaker.CfnModel(
            self,
            "Model",
            execution_role_arn=self.role.role_arn,
            enable_network_isolation=True,  # models come from S3 via SageMaker; the container needs no network
            primary_container=sagemaker.CfnModel.ContainerDefinitionProperty(
                image=self.image.image_uri,
                mode="MultiModel",
                model_data_url=store.model_data_url,
                multi_model_config=sagemaker.CfnModel.MultiModelConfigProperty(
                    model_cache_setting=settings.model_cache,
                ),
                environment=settings.container_environment(),
            ),
        )
        # CreateModel checks the role can pull the image, so the role's policy must exist first (the role itself is
        # already ordered by the GetAtt on its ARN).
        policy = self.role.node.find_child("DefaultPolicy").node.default_child
        assert isinstance(policy, iam.CfnPolicy)
        model.add_resource_dependency(policy)

        has_volume = settings.volume_size_gb > 0
        endpoint_config = sagemaker.CfnEndpointConfig(
            self,
            "EndpointConfig",
            # SageMaker refuses a volume KMS key on instance types with NVMe instance storage (volume_size_gb=0).
            kms_key_id=store.key.key_arn if has_volume else None,
            production_variants=[
                sagemaker.CfnEndpointConfig.ProductionVariantProperty(
                    variant_name=VARIANT_NAME,
                    model_name=model.attr_model_name,
                    instance_type=settings.instance_type,
                    initial_instance_count=settings.initial_instance_count,
                    initial_variant_weight=1.0,
                    volume_size_in_gb=settings.volume_size_gb if has_volume else None,
                    model_data_download_timeout_in_seconds=settings.model_download_timeout_seconds,
                    container_startup_health_check_timeout_in_seconds=settings.startup_health_check_timeout_seconds,
                )
            ],
            data_capture_config=self._data_capture_config(store, settings),
        )

        self.endpoint = sagemaker.CfnEndpoint(
            self,
            "Endpoint",
            endpoint_name=endpoint_name,
            endpoint_config_name=endpoint_config.attr_endpoint_config_name,
        )

        self.scalable_target = appscaling.ScalableTarget(
            self,
            "ScalableTarget",
            service_namespace=appscaling.ServiceNamespace.SAGEMAKER,
            resource_id=f"endpoint/{self.endpoint.attr_endpoint_name}/variant/{VARIANT_NAME}",
            scalable_dimension="sagemaker:variant:DesiredInstanceCount",
            min_capacity=settings.min_instance_count,
            max_capacity=settings.max_instance_count,
        )
        self.scalable_target.scale_to_track_metric(
            "InvocationsPerInstance",
            predefined_metric=appscaling.PredefinedMetric.SAGEMAKER_VARIANT_INVOCATIONS_PER_INSTANCE,
            target_value=settings.target_invocations_per_instance,
            scale_in_cooldown=_seconds(settings.scale_in_cooldown_seconds),
            scale_out_cooldown=_seconds(settings.scale_out_cooldown_seconds),
        )
        if settings.target_memory_utilization_percent:
            # Each loaded model costs a whole TensorFlow worker (~650 MB), so memory, not request rate, is what
            # runs out first on a busy MME: scale out before SageMaker starts evicting models.
            self.scalable_target.scale_to_track_metric(
                "MemoryUtilization",
                custom_metric=self.variant_metric("MemoryUtilization", namespace=ENDPOINT_METRICS_NAMESPACE),
                target_value=settings.target_memory_utilization_percent,
                scale_in_cooldown=_seconds(settings.scale_in_cooldown_seconds),
                scale_out_cooldown=_seconds(settings.scale_out_cooldown_seconds),
            )

    def variant_metric(
        self, name: str, *, namespace: str = "AWS/SageMaker", statistic: str = "Average"
    ) -> cloudwatch.Metric:
        """A CloudWatch metric of this endpoint's single variant (5-minute period)."""
        return cloudwatch.Metric(
            namespace=namespace,
            metric_name=name,
            dimensions_map={"EndpointName": self.endpoint.attr_endpoint_name, "VariantName": VARIANT_NAME},
            statistic=statistic,
        )

    def _data_capture_config(
        self, store: ModelStoreRef, settings: StageSettings
    ) -> sagemaker.CfnEndpointConfig.DataCaptureConfigProperty | None:
        if not settings.data_capture_percent:
            return None
        return sagemaker.CfnEndpointConfig.DataCaptureConfigProperty(
            enable_capture=True,
            initial_sampling_percentage=settings.data_capture_percent,
            destination_s3_uri=store.bucket.s3_url_for_object(settings.capture_prefix.rstrip("/")),
            kms_key_id=store.key.key_arn,
            capture_options=[
                sagemaker.CfnEndpointConfig.CaptureOptionProperty(capture_mode="Input"),
                sagemaker.CfnEndpointConfig.CaptureOptionProperty(capture_mode="Output"),
            ],
        )

    def _grant_least_privilege(self, *, store: ModelStoreRef, settings: StageSettings, stack: Stack) -> None:
        """Every statement is scoped to one ARN; the two `Resource: *` ones are AWS's, see the acknowledgements."""
        role = self.role
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ReadModelArchives",
                actions=["s3:GetObject"],
                resources=[store.model_objects_arn()],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ListModelPrefix",
                actions=["s3:ListBucket"],
                resources=[store.bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [settings.model_prefix, f"{settings.model_prefix}*"]}},
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="DecryptModelArchives",
                actions=["kms:Decrypt"],
                resources=[store.key.key_arn],
                conditions={"StringEquals": {"kms:ViaService": f"s3.{stack.region}.amazonaws.com"}},
            )
        )
        if settings.data_capture_percent:
            role.add_to_policy(
                iam.PolicyStatement(
                    sid="WriteCapturedData",
                    actions=["s3:PutObject"],
                    resources=[store.capture_objects_arn()],
                )
            )
            role.add_to_policy(
                iam.PolicyStatement(
                    sid="EncryptCapturedData",
                    actions=["kms:GenerateDataKey", "kms:Decrypt"],
                    resources=[store.key.key_arn],
                    conditions={"StringEquals": {"kms:ViaService": f"s3.{stack.region}.amazonaws.com"}},
                )
            )
        # Pull: the three image actions on the asset repository only (CDK image assets share one bootstrap
        # repository per account and region; ECR has no per-image IAM resource).
        self.image.repository.grant_pull(role)
        log_group_arn = stack.format_arn(
            service="logs",
            resource="log-group",
            resource_name=f"/aws/sagemaker/Endpoints/{self.endpoint_name}",
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="WriteEndpointLogs",
                actions=["logs:CreateLogGroup", "logs:DescribeLogStreams"],
                resources=[log_group_arn],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="WriteEndpointLogStreams",
                actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                resources=[f"{log_group_arn}:log-stream:*"],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="PutEndpointMetrics",
                actions=["cloudwatch:PutMetricData"],
                resources=["*"],  # PutMetricData has no resource-level permissions; the namespace condition scopes it
                conditions={"StringEquals": {"cloudwatch:namespace": ENDPOINT_METRICS_NAMESPACE}},
            )
        )
        Validations.of(role).acknowledge(
            Acknowledgment(
                id="AwsSolutions-IAM5[Resource::*]",
                reason="Only ecr:GetAuthorizationToken and cloudwatch:PutMetricData (namespace-conditioned) use "
                "Resource '*': neither action supports resource-level permissions.",
            ),
            Acknowledgment(
                id=f"AwsSolutions-IAM5[Resource::{nag_resource(role, store.model_objects_arn())}]",
                reason="Read access to every archive under the model prefix is the point of a multi-model endpoint: "
                "TargetModel can name any key under it.",
            ),
            Acknowledgment(
                id=f"AwsSolutions-IAM5[Resource::{nag_resource(role, f'{log_group_arn}:log-stream:*')}]",
                reason="SageMaker creates one log stream per instance with generated names, all in this endpoint's "
                "own log group.",
            ),
        )
        if settings.data_capture_percent:
            Validations.of(role).acknowledge(
                Acknowledgment(
                    id=f"AwsSolutions-IAM5[Resource::{nag_resource(role, store.capture_objects_arn())}]",
                    reason="Data capture writes generated keys under the capture prefix only.",
                )
            )


def image_excludes(settings: StageSettings) -> list[str]:
    """Docker-ignore rules of the image build: everything but `IMAGE_SOURCES` and the stage's default tokenizer
    folder (if any), and never Python bytecode (the last matching rule wins, so those rules come last)."""
    sources = [*IMAGE_SOURCES, *([settings.default_tokenizer] if settings.default_tokenizer else [])]
    allowed = [rule for source in sources for rule in (f"!{source}", f"!{source}/**")]
    return ["*", *allowed, "**/__pycache__", "**/*.pyc"]


def check_default_tokenizer(settings: StageSettings) -> None:
    """Fail synth unless the stage's `default_tokenizer` ("" = none, nothing to check) is a folder under the
    repository root holding at least one of `TOKENIZER_FILES`.

    `StageSettings` checks only the value's shape; whether the folder is there is a fact of this checkout. Unchecked,
    a mistake shows up late: a failed image build in the pipeline, or a failed load of every archive that ships no
    tokenizer. Raises `SettingsError` naming `stages.<name>.default_tokenizer` and saying what to put there.
    """
    folder = settings.default_tokenizer
    if not folder:
        return
    path = REPO_ROOT / folder
    if not path.exists():
        problem = "does not exist"
    elif not path.resolve().is_relative_to(REPO_ROOT):
        problem = f"leaves the repository (a link to {path.resolve()}); the image build cannot follow it"
    elif not path.is_dir():
        problem = "is not a folder"
    elif not any((path / name).is_file() for name in TOKENIZER_FILES):
        present = sorted(child.name for child in path.iterdir())[:10]
        problem = f"holds no tokenizer files (found {present})"
    else:
        return
    raise SettingsError(
        f"context key 'stages.{settings.name}.default_tokenizer': the folder {folder!r} under the repository root "
        f"({REPO_ROOT}) {problem}; allowed: a folder holding a tokenizer saved with transformers' save_pretrained "
        f"(at least one of {', '.join(TOKENIZER_FILES)}). Create it on a machine that has the tokenizer, e.g. "
        f'`python -c "from transformers import AutoTokenizer; '
        f"AutoTokenizer.from_pretrained('bert-base-cased').save_pretrained('{folder}')\"`, then commit the folder "
        '(the pipeline builds the image from git), or set default_tokenizer to "" if every archive ships its own.'
    )


def nag_resource(scope: Construct, value: str) -> str:
    """`value` (an ARN that may hold tokens) as cdk-nag prints it in a finding id such as `IAM5[Resource::...]`.

    cdk-nag flattens `Fn::Join`, writes `Ref`/`Fn::GetAtt` as `<Id>`/`<Id.Attr>` and any other intrinsic as
    compact JSON. Computing the id keeps acknowledgements exact without copying generated logical IDs by hand.
    """
    return _render_nag(Stack.of(scope).resolve(value))


def _render_nag(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        ((key, arg),) = value.items()
        if key == "Fn::Join":
            separator, parts = arg
            return str(separator).join(_render_nag(part) for part in parts)
        if key == "Ref":
            return f"<{arg}>"
        if key == "Fn::GetAtt":
            return f"<{arg[0]}.{arg[1]}>"
    return json.dumps(value, separators=(",", ":"))


def _seconds(value: int) -> Duration:
    return Duration.seconds(value)


class EndpointStack(Stack):
    """Deployment unit for the endpoint and its monitoring. Stateless: destroy it to stop paying; models stay.

    Props:
        settings: the stage settings.

    The model store is imported through its SSM parameters (`ModelStoreRef.from_parameters`), so this stack must
    deploy after the stage's `ModelStoreStack` (the stage adds that dependency).

    Outputs `EndpointName` (also SSM `<ssm_prefix>/endpoint-name`, which disappears with the stack so the `mme`
    CLI can tell a sleeping endpoint from a missing one).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: StageSettings,
        **kwargs: object,
    ) -> None:
        super().__init__(
            scope,
            construct_id,
            termination_protection=settings.termination_protection,
            description="Multi-model SageMaker endpoint, autoscaling and alarms (stateless; destroy to stop costs)",
            **kwargs,  # type: ignore[arg-type]
        )
        store = ModelStoreRef.from_parameters(
            self,
            ssm_prefix=settings.ssm_prefix,
            model_prefix=settings.model_prefix,
            capture_prefix=settings.capture_prefix,
        )
        # The endpoint is named after this stack: unique per account and region, known at synth (so the role can
        # name the log group without a dependency cycle), and never changed, so updates never need a replacement.
        self.serving = MultiModelEndpoint(
            self, "Serving", store=store, settings=settings, endpoint_name=self.stack_name
        )
        self.monitoring = EndpointMonitoring(self, "Monitoring", endpoint=self.serving, settings=settings)

        self.endpoint_name_output = CfnOutput(self, "EndpointName", value=self.serving.endpoint.attr_endpoint_name)
        self.bucket_output = CfnOutput(self, "ModelBucketName", value=store.bucket.bucket_name)
        self.prefix_output = CfnOutput(self, "ModelPrefix", value=settings.model_prefix)
        ssm.StringParameter(
            self,
            "EndpointNameParameter",
            parameter_name=f"{settings.ssm_prefix}/endpoint-name",
            string_value=self.serving.endpoint.attr_endpoint_name,
            description="Name of this stage's multi-model endpoint (absent while the endpoint stack is destroyed)",
        )
