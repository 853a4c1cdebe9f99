"""Model store: retained, encrypted, versioned, SSL-only, logged; logical IDs of stateful resources pinned."""

from __future__ import annotations

import json

from aws_cdk.assertions import Match, Template
from cdk_synth import Synthesized

from stacks.model_store import ACCESS_LOG_BUCKET_LOGICAL_ID, MODEL_BUCKET_LOGICAL_ID, MODEL_KEY_LOGICAL_ID


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


def test_everything_in_the_store_is_retained_except_after_a_failed_create(dev_store: Template) -> None:
    # Buckets, key, both bucket policies (a retained bucket must keep refusing plain HTTP) and the SSM parameters
    # (they keep pointing at the retained bucket, and block a new store from silently replacing it). Not retained
    # when their own create fails and rolls back, so that failure leaves nothing behind.
    resources = dev_store.to_json()["Resources"]
    assert {r["Type"] for r in resources.values()} == {
        "AWS::S3::Bucket",
        "AWS::S3::BucketPolicy",
        "AWS::KMS::Key",
        "AWS::SSM::Parameter",
    }
    assert len(dev_store.find_resources("AWS::S3::BucketPolicy")) == 2
    for logical_id, resource in resources.items():
        assert resource["DeletionPolicy"] == "RetainExceptOnCreate", logical_id
        assert resource["UpdateReplacePolicy"] == "Retain", logical_id


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


def test_ssm_parameters_publish_bucket_key_and_prefix(dev_store: Template) -> None:
    names = {p["Properties"]["Name"] for p in dev_store.find_resources("AWS::SSM::Parameter").values()}
    assert names == {"/mme/dev/bucket", "/mme/dev/key-arn", "/mme/dev/model-prefix"}


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
    # Nothing is read through SSM any more: a parameter would not hold the store in place.
    parameters = dev_endpoint.to_json().get("Parameters", {})
    assert not [
        p
        for p in parameters.values()
        if p["Type"].startswith("AWS::SSM::Parameter::Value") and not p["Default"].startswith("/cdk-bootstrap/")
    ]
