"""Model store: retained, encrypted, versioned, SSL-only, logged; logical IDs of stateful resources pinned."""

from __future__ import annotations

import json

import pytest
from aws_cdk import App
from aws_cdk.assertions import Match, Template
from cdk_synth import TEST_ENV, Synthesized, cdk_json_context

from stacks.model_store import (
    ACCESS_LOG_BUCKET_LOGICAL_ID,
    MODEL_BUCKET_LOGICAL_ID,
    MODEL_KEY_LOGICAL_ID,
    ModelStoreStack,
)
from stacks.settings import StageSettings

#: Logical IDs of every retained resource of the store as deployed stages have them. A retained resource whose
#: logical ID changes is orphaned and created again, which fails for the fixed-name SSM parameters ("already
#: exists") and makes a new, empty bucket or key; new resources are added here, existing ones never change.
RETAINED_LOGICAL_IDS = {
    "AWS::KMS::Key": {"ModelStoreKey"},
    "AWS::S3::Bucket": {"ModelBucket", "AccessLogBucket"},
    "AWS::S3::BucketPolicy": {"ModelStoreBucketPolicy638F2224", "ModelStoreAccessLogsPolicy559A1DA5"},
    "AWS::SSM::Parameter": {
        "BucketParameterEB93D4D4",
        "KeyArnParameterAFA45664",
        "ModelPrefixParameterAE6E4541",
        "CapturePrefixParameter170E21E8",  # added with the capture prefix parameter (issue 13)
    },
}


def test_stateful_logical_ids_are_pinned(dev_store: Template) -> None:
    # Changing any of these creates a new, empty bucket/key and orphans the retained one: never change them.
    assert (MODEL_BUCKET_LOGICAL_ID, MODEL_KEY_LOGICAL_ID, ACCESS_LOG_BUCKET_LOGICAL_ID) == (
        "ModelBucket",
        "ModelStoreKey",
        "AccessLogBucket",
    )
    resources = dev_store.to_json()["Resources"]
    assert resources["ModelBucket"]["Type"] == "AWS::S3::Bucket"
    assert resources["ModelStoreKey"]["Type"] == "AWS::KMS::Key"
    assert resources["AccessLogBucket"]["Type"] == "AWS::S3::Bucket"


def test_every_retained_resource_keeps_its_logical_id(dev_store: Template) -> None:
    resources = dev_store.to_json()["Resources"]
    retained = {
        kind: {logical_id for logical_id, resource in resources.items() if resource["Type"] == kind}
        for kind in RETAINED_LOGICAL_IDS
    }
    assert retained == RETAINED_LOGICAL_IDS


def test_everything_in_the_store_is_retained_except_after_a_failed_create(dev_store: Template) -> None:
    # Buckets, key, both bucket policies (a retained bucket must keep refusing plain HTTP) and the SSM parameters
    # (they keep pointing at the retained bucket, and block a new store from silently replacing it). Not retained
    # when their own create fails and rolls back, so that failure leaves nothing behind.
    stateful = {"AWS::S3::Bucket", "AWS::S3::BucketPolicy", "AWS::KMS::Key", "AWS::SSM::Parameter"}
    resources = dev_store.to_json()["Resources"]
    assert len(dev_store.find_resources("AWS::S3::BucketPolicy")) == 2
    assert len(dev_store.find_resources("AWS::SSM::Parameter")) == 4
    for logical_id, resource in resources.items():
        if resource["Type"] in stateful:
            assert resource["DeletionPolicy"] == "RetainExceptOnCreate", logical_id
            assert resource["UpdateReplacePolicy"] == "Retain", logical_id
        else:
            # The sleep switch's creator (CDK's SDK-call function) goes with the stack; the switch it made stays.
            assert resource["Type"] in {
                "Custom::AWS",
                "AWS::Lambda::Function",
                "AWS::IAM::Role",
                "AWS::IAM::Policy",
                "AWS::Logs::LogGroup",
            }, logical_id


def test_the_sleep_switch_is_created_awake_once_and_never_overwritten_or_deleted(dev_store: Template) -> None:
    (switch,) = dev_store.find_resources("Custom::AWS").values()
    create = json.loads(_flat_join(switch["Properties"]["Create"]))
    assert create["service"] == "SSM"
    assert create["action"] == "putParameter"
    assert create["parameters"] == {
        "Name": "/mme/dev/endpoint-state",
        "Value": "awake",
        "Type": "String",
        "Overwrite": False,
    }
    assert create["ignoreErrorCodesMatching"] == "ParameterAlreadyExists"
    assert "Update" not in switch["Properties"]
    assert "Delete" not in switch["Properties"]
    statements = [
        statement
        for policy in dev_store.find_resources("AWS::IAM::Policy").values()
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]
    (put,) = statements
    assert put["Action"] == "ssm:PutParameter"
    assert put["Resource"] == "arn:aws:ssm:eu-west-1:111111111111:parameter/mme/dev/endpoint-state"


def _flat_join(value: object) -> str:
    """The string an `Fn::Join` of literals and references would produce, references as `<ref>`."""
    if isinstance(value, str):
        return value
    assert isinstance(value, dict)
    if "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return separator.join(_flat_join(part) for part in parts)
    return "<ref>"


def test_model_bucket_is_kms_encrypted_versioned_private_and_logged(dev_store: Template) -> None:
    bucket = dev_store.to_json()["Resources"]["ModelBucket"]["Properties"]
    assert "BucketName" not in bucket  # CloudFormation names it
    rule = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert rule["ServerSideEncryptionByDefault"] == {
        "KMSMasterKeyID": {"Fn::GetAtt": ["ModelStoreKey", "Arn"]},
        "SSEAlgorithm": "aws:kms",
    }
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    assert bucket["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert bucket["LoggingConfiguration"]["DestinationBucketName"] == {"Ref": "AccessLogBucket"}
    dev_store.has_resource_properties("AWS::KMS::Key", {"EnableKeyRotation": True})


def test_model_bucket_denies_non_tls_requests(dev_store: Template) -> None:
    dev_store.has_resource_properties(
        "AWS::S3::BucketPolicy",
        {
            "Bucket": {"Ref": "ModelBucket"},
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Effect": "Deny",
                                "Action": "s3:*",
                                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                            }
                        )
                    ]
                )
            },
        },
    )


def test_captured_data_expires_but_models_do_not(dev_store: Template) -> None:
    rules = dev_store.to_json()["Resources"]["ModelBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    expiring = [r for r in rules if "ExpirationInDays" in r]
    assert [r["Prefix"] for r in expiring] == ["capture/"]


def _parameters(template: Template) -> dict[str, object]:
    """The store's SSM parameters: name -> value (a literal, or the intrinsic that resolves to it)."""
    return {
        p["Properties"]["Name"]: p["Properties"]["Value"]
        for p in template.find_resources("AWS::SSM::Parameter").values()
    }


def test_ssm_parameters_publish_bucket_key_and_both_prefixes(dev_store: Template) -> None:
    assert _parameters(dev_store) == {
        "/mme/dev/bucket": {"Ref": "ModelBucket"},
        "/mme/dev/key-arn": {"Fn::GetAtt": ["ModelStoreKey", "Arn"]},
        "/mme/dev/model-prefix": "models/",
        "/mme/dev/capture-prefix": "capture/",
    }


@pytest.mark.parametrize("capture_prefix", ["capture/", "team-a/requests/"])
def test_the_capture_prefix_parameter_holds_the_stage_s_setting(capture_prefix: str) -> None:
    # The store alone, in an app with cdk.json's feature flags: a full synth per prefix would add nothing.
    settings = StageSettings(name="dev", owner="alice", capture_prefix=capture_prefix)
    stack = ModelStoreStack(App(context=cdk_json_context()), "ModelStore", settings=settings, env=TEST_ENV)
    template = Template.from_stack(stack)

    parameters = template.find_resources("AWS::SSM::Parameter").values()
    (parameter,) = (p for p in parameters if p["Properties"]["Name"] == "/mme/alice/dev/capture-prefix")
    assert parameter["Properties"]["Value"] == capture_prefix
    assert parameter["DeletionPolicy"] == "RetainExceptOnCreate"
    rules = template.to_json()["Resources"]["ModelBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    assert [r["Prefix"] for r in rules if "ExpirationInDays" in r] == [capture_prefix]


def test_the_store_is_always_protected_and_the_endpoint_in_prod(synthesized: Synthesized) -> None:
    assert synthesized.stage("prod").model_store.termination_protection is True
    assert synthesized.stage("dev").model_store.termination_protection is True
    assert synthesized.stage("prod").endpoint.termination_protection is True
    assert synthesized.stage("dev").endpoint.termination_protection is False


def test_the_endpoint_imports_the_stores_exports_so_the_store_cannot_go_first(
    dev_store: Template, dev_endpoint: Template
) -> None:
    exports = {output["Export"]["Name"] for output in dev_store.to_json()["Outputs"].values() if "Export" in output}
    assert exports == {"Mme-dev-ModelStore:ModelBucketName", "Mme-dev-ModelStore:ModelStoreKeyArn"}
    endpoint_json = json.dumps(dev_endpoint.to_json())
    for export in exports:
        assert json.dumps({"Fn::ImportValue": export}) in endpoint_json
    # The bucket and key are not read through SSM (a parameter would not hold the store in place): the only SSM
    # parameters the endpoint stack reads are CDK's bootstrap version and the stage's sleep switch.
    parameters = dev_endpoint.to_json().get("Parameters", {})
    ssm_reads = {p["Default"] for p in parameters.values() if p["Type"].startswith("AWS::SSM::Parameter::Value")}
    assert ssm_reads == {"/cdk-bootstrap/hnb659fds/version", "/mme/dev/endpoint-state"}
