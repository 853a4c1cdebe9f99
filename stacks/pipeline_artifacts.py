"""Where the pipeline keeps its artifacts: one encrypted, logged, SSL-only store per region the pipeline deploys to.

CodePipeline reads and writes artifacts in the pipeline's own region; an action in another region reads them from
a replication bucket in that region (CodePipeline copies them there). Both kinds of store are made by
`add_artifact_store`, so they cannot drift apart: a customer-managed, rotated KMS key, a versioned bucket encrypted
with it that refuses plain HTTP and logs its access, and lifecycle rules that expire artifacts.

Lifecycle: key, buckets and bucket policies are all retained when their stack is deleted (CloudFormation
`RetainExceptOnCreate`, as in the model store). s3.Bucket retains by default while kms.Key is destroyed by default;
that pair leaves objects nobody can decrypt once the key's deletion window ends. Destroying both instead needs an
auto-delete custom resource (a Lambda function and role in the pipeline account, and a file asset, so the
replication stacks could no longer deploy without a bootstrap of their region). Retaining both costs one KMS key per
region after the pipeline is deleted, until someone deletes the buckets and schedules the keys' deletion (README);
meanwhile the lifecycle rules expire every artifact after `ARTIFACT_EXPIRATION_DAYS` (its old versions a day later).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aws_cdk import (
    BootstraplessSynthesizer,
    DefaultStackSynthesizer,
    Duration,
    Environment,
    PhysicalName,
    RemovalPolicy,
    Stack,
    StackSynthesizer,
)
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from stacks.settings import SettingsError

#: Removal policy of every artifact key, bucket and bucket policy (see the module docstring).
ARTIFACT_REMOVAL = RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE
#: Days before an artifact (source zip, cloud assembly) expires; every run rebuilds them, so none is worth keeping.
ARTIFACT_EXPIRATION_DAYS = 30
ACCESS_LOG_EXPIRATION_DAYS = 90
#: Construct ids of the store's resources. In the pipeline stack they are the ids the resources always had, so
#: their logical IDs (tests/stacks/test_pipeline_artifacts.py pins them) never change and nothing is replaced.
KEY_ID = "ArtifactKey"
BUCKET_ID = "ArtifactBucket"
ACCESS_LOGS_ID = "ArtifactAccessLogs"
#: CodePipeline's ArtifactStore EncryptionKey Id is at most 100 characters (AWS::CodePipeline::Pipeline
#: EncryptionKey); a replication store is named there by its alias ARN.
MAX_ENCRYPTION_KEY_ID_LENGTH = 100


@dataclass(frozen=True)
class ArtifactStore:
    """One region's artifact store.

    `bucket` is what CodePipeline is given. In a replication store its `encryption_key` is the key's alias (a stack
    in another region cannot reference the key's ARN, which holds a random id), so grants to the pipeline's role
    name the key through the `kms:ResourceAliases` condition; `key` is the key itself.
    """

    key: kms.Key
    bucket: s3.Bucket
    access_logs: s3.Bucket
    #: "alias/..." of a replication store's key; None for the pipeline's own store.
    alias_name: str | None = None


def add_artifact_store(scope: Construct, *, description: str, alias_name: str | None = None) -> ArtifactStore:
    """Create an artifact store in `scope`: key, access-log bucket and artifact bucket, all retained.

    `alias_name` ("alias/...") makes it a replication store: the bucket gets a generated physical name (the
    pipeline stack, in another region, must know it at synth) and is encrypted through the key's alias.
    """
    key = kms.Key(
        scope,
        KEY_ID,
        description=description,
        enable_key_rotation=True,
        removal_policy=ARTIFACT_REMOVAL,
    )
    alias: kms.Alias | None = None
    bucket_key: kms.IKey = key
    if alias_name is not None:
        # The alias is deleted with the stack (a retained alias would block a new stack from creating it); the
        # retained key keeps working without it, since objects record the key's ARN, not the alias.
        alias = kms.Alias(scope, "ArtifactKeyAlias", alias_name=alias_name, target_key=key)
        # Imported by name in this stack's own scope, so ARNs built from it carry this stack's region.
        bucket_key = kms.Alias.from_alias_name(scope, "ArtifactKeyAliasByName", alias_name)

    access_logs = s3.Bucket(
        scope,
        ACCESS_LOGS_ID,
        encryption=s3.BucketEncryption.S3_MANAGED,  # log delivery cannot write to KMS-encrypted buckets
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        enforce_ssl=True,
        versioned=True,
        object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
        removal_policy=ARTIFACT_REMOVAL,
        lifecycle_rules=[
            s3.LifecycleRule(
                expiration=Duration.days(ACCESS_LOG_EXPIRATION_DAYS), noncurrent_version_expiration=Duration.days(7)
            )
        ],
    )
    exempt_log_bucket_from_access_logging(access_logs)
    bucket = s3.Bucket(
        scope,
        BUCKET_ID,
        bucket_name=PhysicalName.GENERATE_IF_NEEDED if alias_name is not None else None,
        encryption=s3.BucketEncryption.KMS,
        encryption_key=bucket_key,
        bucket_key_enabled=True,
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        enforce_ssl=True,
        versioned=True,  # CodePipeline requires a versioned artifact store
        object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
        server_access_logs_bucket=access_logs,
        server_access_logs_prefix="artifacts/",
        removal_policy=ARTIFACT_REMOVAL,
        lifecycle_rules=[
            s3.LifecycleRule(
                expiration=Duration.days(ARTIFACT_EXPIRATION_DAYS),
                noncurrent_version_expiration=Duration.days(1),
                abort_incomplete_multipart_upload_after=Duration.days(1),
            )
        ],
    )
    if alias is not None:
        bucket.node.add_dependency(alias)  # the encryption configuration names the alias, not a reference to it
    for retained in (bucket, access_logs):
        # A bucket policy is its own resource, deleted with the stack by default even when the bucket stays; the
        # retained bucket must keep refusing plain HTTP.
        assert retained.policy is not None  # enforce_ssl (and log delivery) create one
        retained.policy.apply_removal_policy(ARTIFACT_REMOVAL)
    return ArtifactStore(key=key, bucket=bucket, access_logs=access_logs, alias_name=alias_name)


def exempt_log_bucket_from_access_logging(bucket: s3.Bucket) -> None:
    """Skip checkov CKV_AWS_18 ("access logging enabled") on an access-log destination bucket's own resource.

    cdk-nag needs nothing: its S1 rule already passes a bucket that another bucket of the stack logs to.
    """
    reason = "This bucket is the access-log destination itself; logging it to itself would loop."
    cfn_bucket = bucket.node.default_child
    assert isinstance(cfn_bucket, s3.CfnBucket)
    cfn_bucket.add_metadata("checkov", {"skip": [{"id": "CKV_AWS_18", "comment": reason}]})


class ArtifactReplicationStack(Stack):
    """The pipeline's artifact store in one other region, in the pipeline's account.

    Props:
        pipeline_stack: the pipeline's stack; this stack takes its account and deploys through its CDK bootstrap
            roles (see below). The pipeline stack depends on this one, so `cdk deploy` of the pipeline (and its
            self-mutation) deploys it first.
        region: the region of the stages this store serves.
        deploy_role_arns: the CDK deploy roles of the stages in `region` that live in another account. Their
            CloudFormation actions read artifacts from this bucket: the bucket policy gets them through CDK's own
            grants, the key policy here (CDK's grant would go to the roles' own policies, which it cannot edit).

    Bring-your-own instead of the support stack CDK generates: the generated one has no access logs and no
    lifecycle, retains its bucket while destroying its key, and CDK grants the pipeline role kms actions on
    `Resource: *` for its key (a key in another region is not referenceable). Here the store is the same as the
    pipeline's own (`add_artifact_store`), and the pipeline's grants name the key through its alias.

    Like CDK's generated support stacks it uses a `BootstraplessSynthesizer` with the pipeline region's deploy and
    CloudFormation execution roles (IAM roles are global), so the pipeline account need not be bootstrapped in
    `region`; that is also why it holds no assets.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        pipeline_stack: Stack,
        region: str,
        deploy_role_arns: Sequence[str] = (),
    ) -> None:
        stack_name = f"{pipeline_stack.stack_name}-artifacts-{region}"
        super().__init__(
            scope,
            construct_id,
            stack_name=stack_name,
            env=Environment(account=pipeline_stack.account, region=region),
            synthesizer=_bootstrapless(pipeline_stack.synthesizer),
            description=f"Artifact replication store of the CDK Pipelines pipeline {pipeline_stack.stack_name}",
        )
        alias_name = f"alias/{stack_name}"
        # Counted with the longest commercial partition name, so the check holds in every partition.
        key_id_length = len(f"arn:aws-us-gov:kms:{region}:{pipeline_stack.account}:{alias_name}")
        if key_id_length > MAX_ENCRYPTION_KEY_ID_LENGTH:
            raise SettingsError(
                f"the replication key alias ARN for region {region!r} would be {key_id_length} characters; "
                f"CodePipeline allows at most {MAX_ENCRYPTION_KEY_ID_LENGTH}: shorten the pipeline stack's name"
            )
        self.store = add_artifact_store(
            self, description=f"Encrypts the pipeline's artifacts replicated to {region}", alias_name=alias_name
        )
        if deploy_role_arns:
            self.store.key.add_to_resource_policy(
                iam.PolicyStatement(
                    sid="StageDeployRolesReadArtifacts",
                    actions=["kms:Decrypt", "kms:DescribeKey"],
                    principals=[iam.ArnPrincipal(arn) for arn in deploy_role_arns],
                    resources=["*"],  # in a key policy, "*" is this key
                )
            )


def _bootstrapless(pipeline_synthesizer: StackSynthesizer) -> StackSynthesizer | None:
    if not isinstance(pipeline_synthesizer, DefaultStackSynthesizer):
        return None  # a custom synthesizer decides for itself: use the default for this stack too
    return BootstraplessSynthesizer(
        deploy_role_arn=pipeline_synthesizer.deploy_role_arn,
        cloud_formation_execution_role_arn=pipeline_synthesizer.cloud_formation_execution_role_arn,
    )
