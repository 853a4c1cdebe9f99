"""Termination protection applied by the pipeline itself: CloudFormation deploy actions ignore a stack's
`terminationProtection` (aws/aws-cdk#17871, #30405), so a post-deploy step enables it on every protected stack.

dev and prod from cdk.json: the model store is protected in every stage, the endpoint stack in prod only.
"""

from __future__ import annotations

import json
from typing import Any

from aws_cdk.assertions import Template
from cdk_synth import Synthesized

REGION, ACCOUNT = "eu-west-1", "111111111111"


def _pipeline(template: Template) -> dict[str, Any]:
    (pipeline,) = template.find_resources("AWS::CodePipeline::Pipeline").values()
    return dict(pipeline["Properties"])


def _action(template: Template, stage: str, name: str) -> dict[str, Any]:
    (actions,) = [s["Actions"] for s in _pipeline(template)["Stages"] if s["Name"] == stage]
    (action,) = [a for a in actions if a["Name"] == name]
    return dict(action)


def _commands(template: Template, action: dict[str, Any]) -> list[str]:
    project = template.to_json()["Resources"][action["Configuration"]["ProjectName"]["Ref"]]
    return list(json.loads(project["Properties"]["Source"]["BuildSpec"])["phases"]["build"]["commands"])


def _protected(synthesized: Synthesized, stage: str) -> list[str]:
    """Names of the stage's stacks whose `termination_protection` is True, read from the Stack objects."""
    serving = synthesized.stage(stage)
    return [s.stack_name for s in (serving.model_store, serving.endpoint) if s.termination_protection]


def test_the_stacks_that_must_be_protected(synthesized: Synthesized) -> None:
    # What the steps below must cover (the settings decide; the pipeline only reads the stacks).
    assert _protected(synthesized, "dev") == ["Mme-dev-ModelStore"]
    assert _protected(synthesized, "prod") == ["Mme-prod-ModelStore", "Mme-prod-Endpoint"]


def test_each_stage_enables_termination_protection_on_exactly_its_protected_stacks(
    pipeline_template: Template, synthesized: Synthesized
) -> None:
    for stage in ("dev", "prod"):
        action = _action(pipeline_template, stage.capitalize(), f"ProtectStacks{stage.capitalize()}")
        calls = [c for c in _commands(pipeline_template, action) if "update-termination-protection" in c]
        assert calls == [
            "aws cloudformation update-termination-protection --enable-termination-protection"
            f" --stack-name {name} --region {REGION} --profile stage"
            for name in _protected(synthesized, stage)
        ]
        # It acts through the stage's post-deploy role, whose ARN comes from the endpoint stack's output.
        env = {v["name"]: v["value"] for v in json.loads(action["Configuration"]["EnvironmentVariables"])}
        assert env["STAGE_ROLE_ARN"].endswith(".PostDeployRoleArn}")


def test_protection_runs_after_every_deploy_of_the_stage(pipeline_template: Template) -> None:
    for stage in ("Dev", "Prod"):
        (actions,) = [s["Actions"] for s in _pipeline(pipeline_template)["Stages"] if s["Name"] == stage]
        protect = next(a for a in actions if a["Name"] == f"ProtectStacks{stage}")
        deploys = [a for a in actions if a["ActionTypeId"]["Provider"] == "CloudFormation"]
        assert protect["RunOrder"] > max(a["RunOrder"] for a in deploys)


def test_the_post_deploy_role_may_enable_protection_on_exactly_those_stacks(synthesized: Synthesized) -> None:
    for stage in ("dev", "prod"):
        endpoint = synthesized.template(synthesized.stage(stage).endpoint)
        statements = [
            s
            for p in endpoint.find_resources("AWS::IAM::Policy").values()
            if p["Properties"]["Roles"] == [{"Ref": "PostDeployRole"}]
            for s in p["Properties"]["PolicyDocument"]["Statement"]
        ]
        protect = [s for s in statements if "cloudformation:UpdateTerminationProtection" in str(s["Action"])]
        expected = sorted(
            f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{n}/*" for n in _protected(synthesized, stage)
        )
        assert len(protect) == 1
        assert protect[0]["Action"] == "cloudformation:UpdateTerminationProtection"
        resources = protect[0]["Resource"]
        assert sorted(resources if isinstance(resources, list) else [resources]) == expected
        # Nothing else of CloudFormation: the pipeline can protect, never unprotect or delete.
        assert [s["Action"] for s in statements if "cloudformation:" in str(s["Action"])] == [
            "cloudformation:UpdateTerminationProtection"
        ]


def test_the_cloud_assembly_still_records_protection_for_cdk_deploy(synthesized: Synthesized) -> None:
    # `cdk deploy` of a stage stack applies it itself; the pipeline's step is what makes it true for the pipeline.
    manifest = json.loads((synthesized.outdir / "assembly-MmePipeline-Prod" / "manifest.json").read_text())
    protected = {
        artifact["properties"]["stackName"]
        for artifact in manifest["artifacts"].values()
        if artifact["type"] == "aws:cloudformation:stack" and artifact["properties"].get("terminationProtection")
    }
    assert protected == set(_protected(synthesized, "prod"))
