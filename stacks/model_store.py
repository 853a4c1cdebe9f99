"""The stateful model store: a retained, KMS-encrypted, versioned bucket that holds every model archive.

It lives in its own stack so that destroying the endpoint (to stop paying per hour) never touches a model.
"""

from __future__ import annotations

from aws_cdk import (
    Acknowledgment,
    CfnOutput,
    CfnResource,
    Duration,
    Fn,
    RemovalPolicy,
    Stack,
    Validations,
)
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_ssm as ssm
from aws_cdk import custom_resources as cr
from constructs import Construct

from mme.aws.names import (
    AWAKE,
    BUCKET_PARAMETER,
    CAPTURE_PREFIX_PARAMETER,
    ENDPOINT_STATE_PARAMETER,
    KEY_ARN_PARAMETER,
    MODEL_PREFIX_PARAMETER,
)
from stacks.settings import StageSettings

#: Logical IDs of the stateful resources. They are pinned (tests/stacks/test_model_store_stack.py) because a new logical
#: ID makes CloudFormation create a new bucket/key and orphan the retained old ones with every model in them.
MODEL_BUCKET_LOGICAL_ID = "ModelBucket"
#: What is kept when the stack is deleted: everything. "Except on create" so that a create which fails and rolls
#: back (for example because a destroyed store's retained SSM parameters still exist) leaves no orphan behind.
STATEFUL_REMOVAL = RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE
#: Construct id of CDK's singleton provider function behind `AwsCustomResource` (aws-cdk-lib, custom-resources).
AWS_CUSTOM_RESOURCE_PROVIDER_ID = "AWS679f53fac002430cb0da5b7982bd2287"
#: What the store stack exports for the endpoint stack (`export_name`).
BUCKET_NAME_EXPORT = "ModelBucketName"
KEY_ARN_EXPORT = "ModelStoreKeyArn"


def export_name(store_stack_name: str, value: str) -> str:
    """Name of the store stack's export of `value` (`BUCKET_NAME_EXPORT` | `KEY_ARN_EXPORT`); unique per region."""
    return f"{store_stack_name}:{value}"


MODEL_KEY_LOGICAL_ID = "ModelStoreKey"
ACCESS_LOG_BUCKET_LOGICAL_ID = "AccessLogBucket"


class ModelStoreRef:
    """What a consumer of the model store needs: bucket, key and the two prefixes.

    Built from the live `ModelStore`, or in the endpoint stack from the store stack's exports (`from_exports`).
    """

    def __init__(self, *, bucket: s3.IBucket, key: kms.IKey, model_prefix: str, capture_prefix: str) -> None:
        self.bucket = bucket
        self.key = key
        self.model_prefix = model_prefix
        self.capture_prefix = capture_prefix

    @classmethod
    def from_exports(
        cls, scope: Construct, *, store_stack_name: str, model_prefix: str, capture_prefix: str
    ) -> ModelStoreRef:
        """Import the store through the exports of the stack `store_stack_name` (`Fn::ImportValue`).

        CloudFormation refuses to delete a stack whose export another stack imports ("Exporting stack outputs",
        CloudFormation user guide), so the store cannot be destroyed while the endpoint reads from it. The exported
        bucket name and key ARN never change (pinned logical IDs, retained resources), so the export never blocks an
        update. Explicit export names, rather than CDK's automatic references, also keep acknowledgements of
        statements on these ARNs exact at synth.
        """
        bucket_name = Fn.import_value(export_name(store_stack_name, BUCKET_NAME_EXPORT))
        key_arn = Fn.import_value(export_name(store_stack_name, KEY_ARN_EXPORT))
        return cls(
            bucket=s3.Bucket.from_bucket_name(scope, "ModelBucket", bucket_name),
            key=kms.Key.from_key_arn(scope, "ModelStoreKey", key_arn),
            model_prefix=model_prefix,
            capture_prefix=capture_prefix,
        )

    @property
    def model_data_url(self) -> str:
        """The `ModelDataUrl` of a multi-model container: the S3 prefix (a token until deploy)."""
        return self.bucket.s3_url_for_object(self.model_prefix)

    def model_objects_arn(self) -> str:
        """ARN pattern of every object under the model prefix (for s3:GetObject)."""
        return self.bucket.arn_for_objects(f"{self.model_prefix}*")

    def capture_objects_arn(self) -> str:
        """ARN pattern of every object under the capture prefix (for s3:PutObject)."""
        return self.bucket.arn_for_objects(f"{self.capture_prefix}*")

    @property
    def capture_url(self) -> str:
        """Where the container captures requests to: `s3://<bucket>/<capture_prefix>` (a token until deploy)."""
        return self.bucket.s3_url_for_object(self.capture_prefix)


class ModelStore(Construct):
    """Bucket + customer-managed key for model archives, with server access logs to a second retained bucket.

    Props:
        model_prefix: key prefix of the archives (TargetModel keys are relative to it), e.g. "models/".
        capture_prefix: key prefix for endpoint data capture; objects under it expire after `capture_retention_days`.
        capture_retention_days: lifetime of captured request/response files.

    Everything is retained (`STATEFUL_REMOVAL`): deleting the stack leaves key, buckets and their bucket policies in
    place, so a retained bucket keeps refusing plain HTTP and keeps accepting access logs.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        model_prefix: str,
        capture_prefix: str,
        capture_retention_days: int,
    ) -> None:
        super().__init__(scope, construct_id)
        self.model_prefix = model_prefix
        self.capture_prefix = capture_prefix

        self.key = kms.Key(
            self,
            "Key",
            description="Encrypts model archives, captured data and the endpoint's volumes",
            enable_key_rotation=True,
            removal_policy=STATEFUL_REMOVAL,
        )
        _pin(self.key, MODEL_KEY_LOGICAL_ID)

        # Server access logs cannot be delivered to a KMS-encrypted bucket, so this one uses SSE-S3.
        self.access_log_bucket = s3.Bucket(
            self,
            "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            removal_policy=STATEFUL_REMOVAL,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="ExpireOldAccessLogs",
                    expiration=Duration.days(365),
                    noncurrent_version_expiration=Duration.days(30),
                )
            ],
        )
        _pin(self.access_log_bucket, ACCESS_LOG_BUCKET_LOGICAL_ID)
        skip_self_logging(self.access_log_bucket)

        self.bucket = s3.Bucket(
            self,
            "Bucket",
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.key,
            bucket_key_enabled=True,  # SageMaker reads many objects; bucket keys cut KMS calls and cost
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,  # archives are never overwritten; versioning also protects against accidental deletes
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=self.access_log_bucket,
            server_access_logs_prefix="model-bucket/",
            removal_policy=STATEFUL_REMOVAL,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="ExpireCapturedData",
                    prefix=capture_prefix,
                    expiration=Duration.days(capture_retention_days),
                    noncurrent_version_expiration=Duration.days(1),
                ),
                s3.LifecycleRule(id="AbortIncompleteUploads", abort_incomplete_multipart_upload_after=Duration.days(7)),
            ],
        )
        _pin(self.bucket, MODEL_BUCKET_LOGICAL_ID)
        for bucket in (self.bucket, self.access_log_bucket):
            # A bucket policy is its own resource, deleted with the stack by default even when the bucket stays.
            assert bucket.policy is not None  # enforce_ssl and log delivery both create one
            bucket.policy.apply_removal_policy(STATEFUL_REMOVAL)
        self.ref = ModelStoreRef(
            bucket=self.bucket, key=self.key, model_prefix=model_prefix, capture_prefix=capture_prefix
        )


def skip_self_logging(bucket: s3.Bucket) -> None:
    """Mark an access-log destination bucket as exempt from checkov's "has access logging" (CKV_AWS_18). cdk-nag's
    S1 already passes a bucket that another bucket of its stack logs to, so it needs no acknowledgement."""
    reason = "This is the access-log destination itself; logging it to itself would loop."
    cfn_bucket = bucket.node.default_child
    assert isinstance(cfn_bucket, s3.CfnBucket)
    cfn_bucket.add_metadata("checkov", {"skip": [{"id": "CKV_AWS_18", "comment": reason}]})


def _pin(resource: Construct, logical_id: str) -> None:
    child = resource.node.default_child
    assert isinstance(child, CfnResource)
    child.override_logical_id(logical_id)


class ModelStoreStack(Stack):
    """Deployment unit for the model store. Stateful: always termination-protected, everything retained.

    Destroying it never saves money (the endpoint stack is what costs) and would orphan the retained bucket, so it is
    protected in every stage; CloudFormation also refuses to delete it while the endpoint stack imports its exports.

    Exposes `store`, CloudFormation outputs and SSM parameters (`<ssm_prefix>/bucket`, `<ssm_prefix>/key-arn`,
    `<ssm_prefix>/model-prefix`, `<ssm_prefix>/capture-prefix`), through which the `mme` CLI finds the bucket and
    where in it models and captured requests live, even while the endpoint stack is destroyed. The parameters are
    retained too: after the stack is deleted they still point at the retained bucket, and a new store stack for the
    stage fails to create (the parameter exists) instead of silently pointing them at a new empty bucket; README,
    "What each change does", says how to adopt the retained store.
    """

    def __init__(self, scope: Construct, construct_id: str, *, settings: StageSettings, **kwargs: object) -> None:
        super().__init__(
            scope,
            construct_id,
            termination_protection=True,
            description="Model archives for the multi-model endpoint (stateful, retained)",
            **kwargs,  # type: ignore[arg-type]
        )
        self.store = ModelStore(
            self,
            "ModelStore",
            model_prefix=settings.model_prefix,
            capture_prefix=settings.capture_prefix,
            capture_retention_days=settings.capture_retention_days,
        )
        CfnOutput(
            self,
            "ModelBucketName",
            value=self.store.bucket.bucket_name,
            export_name=export_name(self.stack_name, BUCKET_NAME_EXPORT),
        )
        CfnOutput(
            self,
            "ModelStoreKeyArn",
            value=self.store.key.key_arn,
            export_name=export_name(self.stack_name, KEY_ARN_EXPORT),
        )
        CfnOutput(self, "ModelPrefix", value=settings.model_prefix)
        CfnOutput(self, "ModelDataUrl", value=self.store.ref.model_data_url)
        # Parameter names are a contract with the `mme` CLI, hence fixed (per stage) rather than generated.
        parameters = (
            ("BucketParameter", BUCKET_PARAMETER, self.store.bucket.bucket_name, "Model store bucket of this stage"),
            ("KeyArnParameter", KEY_ARN_PARAMETER, self.store.key.key_arn, "KMS key of the model store bucket"),
            (
                "ModelPrefixParameter",
                MODEL_PREFIX_PARAMETER,
                settings.model_prefix,
                "Key prefix of the model archives (TargetModel is relative to it)",
            ),
            (
                "CapturePrefixParameter",
                CAPTURE_PREFIX_PARAMETER,
                settings.capture_prefix,
                "Key prefix the endpoint captures requests to (mme capture read)",
            ),
        )
        for construct_id, name, value, description in parameters:
            parameter = ssm.StringParameter(
                self,
                construct_id,
                parameter_name=f"{settings.ssm_prefix}/{name}",
                string_value=value,
                description=description,
            )
            parameter.apply_removal_policy(STATEFUL_REMOVAL)
        self.endpoint_state_parameter = f"{settings.ssm_prefix}/{ENDPOINT_STATE_PARAMETER}"
        EndpointStateSwitch(self, "EndpointStateSwitch", parameter_name=self.endpoint_state_parameter)


class EndpointStateSwitch(Construct):
    """The stage's sleep switch: an SSM parameter created "awake" if it does not exist yet, never written again by
    CloudFormation and never deleted (README, "Sleep and wake").

    Not an `AWS::SSM::Parameter`: `mme sleep`/`wake` and idle auto-sleep flip its value, which would show as drift
    on such a resource, and any later change to the resource's properties would write "awake" back and wake the
    endpoint on its next deploy. A create-only SDK call (PutParameter without Overwrite) has neither problem. It lives
    in the store stack because the endpoint stack reads it as a parameter, which must exist before that stack does.

    Props:
        parameter_name: the SSM parameter, `<ssm_prefix>/endpoint-state`.
    """

    def __init__(self, scope: Construct, construct_id: str, *, parameter_name: str) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        parameter_arn = stack.format_arn(service="ssm", resource="parameter", resource_name=parameter_name.lstrip("/"))
        create = cr.AwsSdkCall(
            service="SSM",
            action="putParameter",
            parameters={"Name": parameter_name, "Value": AWAKE, "Type": "String", "Overwrite": False},
            physical_resource_id=cr.PhysicalResourceId.of(parameter_name),
            # A stage redeployed after its store stack was deleted keeps its switch as it was.
            ignore_error_codes_matching="ParameterAlreadyExists",
        )
        self.resource = cr.AwsCustomResource(
            self,
            "Create",
            on_create=create,
            policy=cr.AwsCustomResourcePolicy.from_statements(
                [iam.PolicyStatement(actions=["ssm:PutParameter"], resources=[parameter_arn])]
            ),
            install_latest_aws_sdk=False,  # the runtime's SDK has PutParameter; no download at deploy time
        )
        # CDK's one provider function per stack behind every AwsCustomResource (the construct id is CDK's).
        provider = stack.node.find_child(AWS_CUSTOM_RESOURCE_PROVIDER_ID)
        Validations.of(provider).acknowledge(
            Acknowledgment(
                id="AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                "AWSLambdaBasicExecutionRole]",
                reason="CDK's AwsCustomResource provider writes its own logs with the basic execution policy "
                "(CreateLogGroup/CreateLogStream/PutLogEvents); its only other right is ssm:PutParameter on the "
                "switch.",
            )
        )
        function = provider.node.find_child("Resource")
        assert isinstance(function, CfnResource)
        log_group = provider.node.find_child("LogGroup").node.default_child
        assert isinstance(log_group, CfnResource)
        log_group.add_metadata(
            "checkov",
            {"skip": [{"id": "CKV_AWS_158", "comment": "CloudWatch Logs encrypts every log group at rest."}]},
        )
        # CDK lists the provider's role in DependsOn beside the GetAtt of its ARN.
        function.add_metadata("cfn-lint", {"config": {"ignore_checks": ["W3005"]}})
        function.add_metadata(
            "checkov",
            {
                "skip": [
                    {"id": "CKV_AWS_117", "comment": "Calls SSM only, once per stack create; no VPC needed."},
                    {"id": "CKV_AWS_116", "comment": "CloudFormation waits for its answer; a DLQ could not give it."},
                    {"id": "CKV_AWS_115", "comment": "Reserved concurrency fails in accounts with a low quota."},
                    {"id": "CKV_AWS_173", "comment": "No environment variables hold anything secret."},
                ]
            },
        )
