"""The multi-model endpoint itself: image, execution role, log group, MultiModel model, endpoint config, endpoint.

The alpha L2 `Model` cannot express MultiModel mode, so `MultiModelEndpoint` wraps the L1 resources.
"""

from __future__ import annotations

import re
from pathlib import Path

from aws_cdk import (
    Acknowledgment,
    IgnoreMode,
    RemovalPolicy,
    Stack,
    Validations,
)
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sagemaker as sagemaker
from constructs import Construct

from stacks.model_store import ModelStoreRef
from stacks.nag import nag_resource
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
#: SageMaker writes an endpoint's container logs to the group `<prefix><endpoint name>`.
ENDPOINT_LOG_GROUP_PREFIX = "/aws/sagemaker/Endpoints/"
ENDPOINT_NAME_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")


class MultiModelEndpoint(Construct):
    """A SageMaker multi-model endpoint serving every archive under the store's model prefix.

    Props:
        store: the model store; the role may read only `<model_prefix>*` and, while capture is on
            (`StageSettings.capture_enabled`), write only `<capture_prefix>*`.
        settings: instance type/count, volume, timeouts, cache, log retention, capture and container tunables.
        endpoint_name: physical endpoint name. The only fixed physical name here: SageMaker names the endpoint's log
            group after it, which the stack creates (with a retention) before the endpoint.

    Exposes `endpoint`, `endpoint_name`, `role`, `image`, `log_group`. Autoscaling is `EndpointAutoscaling`'s.
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
                "allowed: <= 63 characters of letters, digits and '-'; shorten the owner or stage name"
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

        self.log_group = stack_log_group(
            self,
            "LogGroup",
            retention_days=settings.log_retention_days,
            log_group_name=f"{ENDPOINT_LOG_GROUP_PREFIX}{endpoint_name}",
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
                environment=self._container_environment(store=store, settings=settings),
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
        )

        self.endpoint = sagemaker.CfnEndpoint(
            self,
            "Endpoint",
            endpoint_name=endpoint_name,
            endpoint_config_name=endpoint_config.attr_endpoint_config_name,
            # Without it every update (an image push, a setting) resets the variant to InitialInstanceCount and
            # drops an autoscaled fleet mid-traffic; with it the live count and weight carry over
            # (AWS::SageMaker::Endpoint RetainAllVariantProperties, UpdateEndpoint API reference).
            retain_all_variant_properties=True,
        )
        # SageMaker writes to this group once the endpoint runs; creating it first gives it a retention and makes it
        # part of the stack (otherwise SageMaker creates it with no expiry and it outlives the stack).
        self.endpoint.add_resource_dependency(self.log_group.node.default_child)  # type: ignore[arg-type]

    def variant_metric(
        self, name: str, *, namespace: str = "AWS/SageMaker", statistic: str = "Average"
    ) -> cloudwatch.Metric:
        """A CloudWatch metric of this endpoint's single variant (5-minute period)."""
        return cloudwatch.Metric(
            namespace=namespace,
            metric_name=name,
            # The literal name, not the endpoint's attribute: the dashboard outlives a sleeping endpoint.
            dimensions_map={"EndpointName": self.endpoint_name, "VariantName": VARIANT_NAME},
            statistic=statistic,
        )

    def _container_environment(self, *, store: ModelStoreRef, settings: StageSettings) -> dict[str, str]:
        """The stage's container environment plus what only the deployed stage knows: the EndpointName dimension of
        the per-model metrics and, while capture is on, where to capture to and the KMS key to write with (the
        store's, which is also the bucket's default: named, it keeps captured data under that key regardless)."""
        environment = {**settings.container_environment(), "MME_METRICS_ENDPOINT": self.endpoint_name}
        if settings.capture_enabled:
            environment["MME_CAPTURE_DESTINATION"] = store.capture_url
            environment["MME_CAPTURE_KMS_KEY_ID"] = store.key.key_arn
        return environment

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
        if settings.capture_enabled:
            self._grant_capture(store=store, stack=stack)
        # Pull: the three image actions on the asset repository only (CDK image assets share one bootstrap
        # repository per account and region; ECR has no per-image IAM resource).
        self.image.repository.grant_pull(role)
        role.add_to_policy(
            iam.PolicyStatement(
                sid="WriteEndpointLogs",
                # CloudWatch Logs authorizes these on the group's ARN with a trailing ":*" (the LogGroup's Arn
                # attribute); a bare `log-group:NAME` matches only tagging actions (CloudWatch Logs permissions
                # reference, "Resource types defined by Amazon CloudWatch Logs").
                actions=["logs:CreateLogGroup", "logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"],
                resources=[self.log_group.log_group_arn],
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
        )

    def _grant_capture(self, *, store: ModelStoreRef, stack: Stack) -> None:
        """Write-only access to the capture prefix: the container puts records and never reads or lists them."""
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="WriteCapturedRequests",
                actions=["s3:PutObject"],
                resources=[store.capture_objects_arn()],
            )
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="EncryptCapturedRequests",
                # A PutObject with SSE-KMS makes S3 ask KMS for a data key on the caller's behalf.
                actions=["kms:Encrypt", "kms:GenerateDataKey"],
                resources=[store.key.key_arn],
                conditions={"StringEquals": {"kms:ViaService": f"s3.{stack.region}.amazonaws.com"}},
            )
        )
        Validations.of(self.role).acknowledge(
            Acknowledgment(
                id=f"AwsSolutions-IAM5[Resource::{nag_resource(self.role, store.capture_objects_arn())}]",
                reason="The container writes objects under the capture prefix with keys made at run time (model "
                "and hour); it may put objects there and nowhere else, and may not read or list them.",
            ),
        )


def stack_log_group(
    scope: Construct, construct_id: str, *, retention_days: int, log_group_name: str | None = None
) -> logs.LogGroup:
    """A log group that keeps events `retention_days` (a value CloudWatch Logs accepts, see settings) and is deleted
    with its stack, like everything stateless. `log_group_name` None = a generated name."""
    log_group = logs.LogGroup(scope, construct_id, log_group_name=log_group_name, removal_policy=RemovalPolicy.DESTROY)
    cfn_log_group = log_group.node.default_child
    assert isinstance(cfn_log_group, logs.CfnLogGroup)
    # The L2 takes an enum of named periods; the setting is the number of days CloudFormation wants.
    cfn_log_group.retention_in_days = retention_days
    cfn_log_group.add_metadata(
        "checkov",
        {
            "skip": [
                {
                    "id": "CKV_AWS_158",
                    "comment": "CloudWatch Logs encrypts every log group at rest; a customer-managed key would add a "
                    "paid key per stack, and the model store's key cannot trust the logs service from another stack.",
                }
            ]
        },
    )
    return log_group


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
