"""Pipeline: stages in order, synth runs the tests, smoke test scoped to one endpoint, encrypted artifacts."""

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


def test_prod_waits_for_approval_and_each_stage_ends_with_a_smoke_test(pipeline_template: Template) -> None:
    stages = {stage["Name"]: stage["Actions"] for stage in _pipeline(pipeline_template)["Stages"]}
    for name, approval_expected in (("Dev", False), ("Prod", True)):
        actions = sorted(stages[name], key=lambda a: a["RunOrder"])
        names = [a["Name"] for a in actions]
        assert names[-1] == f"SmokeTest{name}", names
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


def test_smoke_test_may_invoke_only_its_endpoint(pipeline_template: Template, synthesized: Synthesized) -> None:
    policies = pipeline_template.find_resources("AWS::IAM::Policy")
    invoke = [
        s
        for p in policies.values()
        for s in p["Properties"]["PolicyDocument"]["Statement"]
        if s["Action"] == "sagemaker:InvokeEndpoint"
    ]
    assert len(invoke) == 2
    resources = sorted(str(s["Resource"]) for s in invoke)
    assert "endpoint/mme-dev-endpoint" in resources[0]
    assert "endpoint/mme-prod-endpoint" in resources[1]


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
