"""Pipeline: stages in order, synth runs the tests, post-deploy steps after every stage, encrypted artifacts."""

from __future__ import annotations

from typing import Any

from aws_cdk.assertions import Match, Template
from cdk_synth import TEST_CONNECTION_ARN, Synthesized


def _pipeline(template: Template) -> dict[str, Any]:
    (pipeline,) = template.find_resources("AWS::CodePipeline::Pipeline").values()
    return pipeline["Properties"]


def test_stages_run_in_order(pipeline_template: Template) -> None:
    names = [stage["Name"] for stage in _pipeline(pipeline_template)["Stages"]]
    assert names == ["Source", "Build", "UpdatePipeline", "Assets", "Dev", "Prod"]


def test_prod_waits_for_approval_and_each_stage_ends_with_its_post_deploy_steps(pipeline_template: Template) -> None:
    stages = {stage["Name"]: stage["Actions"] for stage in _pipeline(pipeline_template)["Stages"]}
    for name, approval_expected in (("Dev", False), ("Prod", True)):
        actions = sorted(stages[name], key=lambda a: a["RunOrder"])
        names = [a["Name"] for a in actions]
        last_run = max(a["RunOrder"] for a in actions)
        # Both after the last deploy, side by side: a failed smoke test must not keep the stacks unprotected.
        assert {a["Name"] for a in actions if a["RunOrder"] == last_run} == {f"ProtectStacks{name}", f"SmokeTest{name}"}
        assert any(n.startswith("Approve") for n in names) is approval_expected
        if approval_expected:
            assert actions[0]["ActionTypeId"]["Category"] == "Approval"
        deploys = [a for a in actions if a["ActionTypeId"]["Provider"] == "CloudFormation"]
        assert {a["Configuration"]["StackName"] for a in deploys} == {
            f"Mme-{name.lower()}-ModelStore",
            f"Mme-{name.lower()}-Endpoint",
        }


def test_source_is_the_codestar_connection(pipeline_template: Template) -> None:
    (source,) = _pipeline(pipeline_template)["Stages"][0]["Actions"]
    assert source["ActionTypeId"]["Provider"] == "CodeStarSourceConnection"
    assert source["Configuration"]["ConnectionArn"] == TEST_CONNECTION_ARN
    assert source["Configuration"]["FullRepositoryId"] == "acme/mme"
    assert source["Configuration"]["BranchName"] == "main"


def test_synth_step_runs_setup_tests_and_cdk_synth(pipeline_template: Template) -> None:
    projects = pipeline_template.find_resources("AWS::CodeBuild::Project")
    specs = [p["Properties"]["Source"]["BuildSpec"] for p in projects.values()]
    synth_specs = [s for s in specs if isinstance(s, str) and "npx cdk synth" in s]
    assert len(synth_specs) == 1
    spec = synth_specs[0]
    assert spec.index("make setup") < spec.index("make test") < spec.index("npx cdk synth")


def test_pipeline_is_self_mutating(pipeline_template: Template) -> None:
    stages = {stage["Name"]: stage["Actions"] for stage in _pipeline(pipeline_template)["Stages"]}
    assert [a["Name"] for a in stages["UpdatePipeline"]] == ["SelfMutate"]


def test_artifacts_are_encrypted_with_a_rotated_customer_managed_key(pipeline_template: Template) -> None:
    store = _pipeline(pipeline_template)["ArtifactStore"]
    assert store["EncryptionKey"]["Type"] == "KMS"
    key_id = store["EncryptionKey"]["Id"]["Fn::GetAtt"][0]
    key = pipeline_template.to_json()["Resources"][key_id]
    assert key["Type"] == "AWS::KMS::Key"
    assert key["Properties"]["EnableKeyRotation"] is True


def test_only_the_stage_post_deploy_role_may_invoke_and_only_its_endpoint(
    pipeline_template: Template, synthesized: Synthesized
) -> None:
    # The CodeBuild steps in the pipeline's account hold no SageMaker permission; they assume the stage's role.
    pipeline_actions = [
        s["Action"]
        for p in pipeline_template.find_resources("AWS::IAM::Policy").values()
        for s in p["Properties"]["PolicyDocument"]["Statement"]
    ]
    assert not [a for a in pipeline_actions if "sagemaker" in str(a)]
    for name in ("dev", "prod"):
        endpoint = synthesized.template(synthesized.stage(name).endpoint)
        invoke = [
            s
            for p in endpoint.find_resources("AWS::IAM::Policy").values()
            for s in p["Properties"]["PolicyDocument"]["Statement"]
            if "sagemaker:InvokeEndpoint" in str(s["Action"])
        ]
        assert invoke == [
            {
                "Action": "sagemaker:InvokeEndpoint",
                "Effect": "Allow",
                "Resource": f"arn:aws:sagemaker:eu-west-1:111111111111:endpoint/mme-{name}-endpoint",
                "Sid": "InvokeTheStageEndpoint",
            }
        ]


def test_smoke_test_invokes_the_demo_target_model(pipeline_template: Template) -> None:
    pipeline_template.has_resource_properties(
        "AWS::CodeBuild::Project",
        {
            "Source": {"BuildSpec": Match.string_like_regexp(r"invoke-endpoint.*--target-model")},
            "Environment": Match.object_like(
                {
                    "EnvironmentVariables": Match.array_with(
                        [{"Name": "TARGET_MODEL", "Type": "PLAINTEXT", "Value": "sentiment.tar.gz"}]
                    )
                }
            ),
        },
    )


def test_artifact_store_logical_ids_never_change(pipeline_template: Template) -> None:
    # A new logical ID would create a new bucket and key and leave the old, retained ones behind.
    resources = pipeline_template.to_json()["Resources"]
    assert resources["ArtifactKey8D84C5F0"]["Type"] == "AWS::KMS::Key"
    assert resources["ArtifactBucket7410C9EF"]["Type"] == "AWS::S3::Bucket"
    assert resources["ArtifactAccessLogsF8325158"]["Type"] == "AWS::S3::Bucket"


def test_artifact_key_buckets_and_bucket_policies_are_all_retained(pipeline_template: Template) -> None:
    # Retaining the buckets (s3.Bucket's default) while destroying the key would leave objects nobody can decrypt;
    # a retained bucket must also keep refusing plain HTTP. Not retained after a failed create: nothing to keep.
    resources = pipeline_template.to_json()["Resources"]
    stateful = {
        i: r for i, r in resources.items() if r["Type"] in {"AWS::KMS::Key", "AWS::S3::Bucket", "AWS::S3::BucketPolicy"}
    }
    assert len(stateful) == 5  # key, two buckets, their two policies
    for logical_id, resource in stateful.items():
        assert resource["DeletionPolicy"] == "RetainExceptOnCreate", logical_id
        assert resource["UpdateReplacePolicy"] == "Retain", logical_id
    bucket = resources["ArtifactBucket7410C9EF"]["Properties"]
    (rule,) = bucket["LifecycleConfiguration"]["Rules"]
    assert rule["ExpirationInDays"] == 30
