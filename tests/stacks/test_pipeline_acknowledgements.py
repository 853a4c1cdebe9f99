"""cdk-nag acknowledgements on the pipeline's side: only on the specific resources that have the finding, and only
for findings that really occur.

cdk-nag 3 keeps an acknowledgement as construct metadata (`Validations.ACKNOWLEDGED_RULES_METADATA_KEY`, data
{rule id: reason}) on the construct given to `Validations.of(...).acknowledge`, and a resource counts as
acknowledged when it or any of its scopes carries the id. An acknowledgement on the pipeline stack would therefore
cover every stage stack under it, and one on the `CodePipeline` construct every role it generates, findings to come
included. The checks here: acknowledgements sit on CloudFormation resources only, and with every acknowledgement
switched off, cdk-nag reports each acknowledged id on the very resource that carried it (validation-report.json).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aws_cdk
import pytest
from aws_cdk import CfnResource, Validations
from aws_cdk.assertions import Template
from cdk_synth import Synthesized, synth_app
from constructs import IConstruct

from stacks.pipeline import PipelineStack

CROSS_ACCOUNT_AND_REGION = {"dev": {}, "prod": {"account": "222222222222", "region": "us-east-1"}}


def _pipeline_owned(pipeline: PipelineStack) -> Iterator[IConstruct]:
    """Every construct the pipeline side adds: its stack minus the stages, the stages' post-deploy roles, and the
    artifact replication stacks."""
    stage_paths = tuple(f"{stage.node.path}/" for stage in pipeline.stages)
    yield from (c for c in pipeline.node.find_all() if not f"{c.node.path}/".startswith(stage_paths))
    for stage in pipeline.stages:
        assert stage.post_deploy_role is not None
        yield from stage.post_deploy_role.node.find_all()
    for stack in pipeline.replication_stacks:
        yield from stack.node.find_all()


def _acknowledgements(construct: IConstruct) -> dict[str, str]:
    found: dict[str, str] = {}
    for entry in construct.node.metadata:
        if entry.type == Validations.ACKNOWLEDGED_RULES_METADATA_KEY:
            found.update({k.removeprefix("Annotation::"): str(v) for k, v in dict(entry.data).items()})
    return found


@pytest.fixture(scope="module")
def cross_environment(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    return synth_app(tmp_path_factory.mktemp("cdk.out-acks"), {"stages": CROSS_ACCOUNT_AND_REGION})


@pytest.fixture(params=["same-environment", "cross-account-and-region"])
def app(request: pytest.FixtureRequest, synthesized: Synthesized, cross_environment: Synthesized) -> Synthesized:
    return synthesized if request.param == "same-environment" else cross_environment


def test_acknowledgements_sit_on_cloudformation_resources_only(app: Synthesized) -> None:
    pipeline = app.pipeline
    for scope in (
        pipeline,
        pipeline.pipeline,
        pipeline.pipeline.pipeline,
        *pipeline.stages,
        *pipeline.replication_stacks,
    ):
        assert _acknowledgements(scope) == {}, scope.node.path
    carriers = [c for c in _pipeline_owned(pipeline) if _acknowledgements(c)]
    assert carriers  # the generated policies do have findings to acknowledge
    for construct in carriers:
        assert CfnResource.is_cfn_resource(construct), (construct.node.path, _acknowledgements(construct))


def test_every_reason_names_the_wildcard_action_it_covers(app: Synthesized) -> None:
    for construct in _pipeline_owned(app.pipeline):
        for rule, reason in _acknowledgements(construct).items():
            assert len(reason) >= 40, (rule, reason)
            if rule.startswith("AwsSolutions-IAM5[Action::"):
                assert rule.removeprefix("AwsSolutions-IAM5[Action::").removesuffix("]") in reason, (rule, reason)


@dataclass(frozen=True)
class Unacknowledged:
    """The app synthesized with every acknowledgement switched off: what was asked, and what cdk-nag reported."""

    #: (construct path, rule id) of every `acknowledge` call on the pipeline's side.
    asked: list[tuple[str, str]]
    #: rule id -> construct paths cdk-nag reports it on.
    reported: dict[str, set[str]]


class _RecordingValidations:
    """Stands in for `Validations.of(scope)`: records acknowledgements instead of making them."""

    def __init__(self, scope: IConstruct, real: Any, asked: list[tuple[str, str]]) -> None:
        self._scope, self._real, self._asked = scope, real, asked

    def acknowledge(self, *rules: Any) -> None:
        self._asked.extend((self._scope.node.path, rule.id) for rule in rules)

    def __getattr__(self, name: str) -> Any:  # add_plugins, add_warning, ...: the real thing
        return getattr(self._real, name)


@pytest.fixture(scope="module", params=[None, CROSS_ACCOUNT_AND_REGION], ids=["same-environment", "cross-environment"])
def unacknowledged(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Unacknowledged:
    asked: list[tuple[str, str]] = []
    real_of = Validations.of
    outdir = tmp_path_factory.mktemp("cdk.out-unacknowledged")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            aws_cdk.Validations, "of", staticmethod(lambda scope: _RecordingValidations(scope, real_of(scope), asked))
        )
        with pytest.raises(Exception, match="ValidationFailed"):
            synth_app(outdir, {"stages": request.param} if request.param else None)
    report = json.loads((Path(outdir) / "validation-report.json").read_text())
    reported: dict[str, set[str]] = {}
    for plugin in report["pluginReports"]:
        for violation in plugin["violations"]:
            paths = {c["constructPath"] for c in violation["violatingConstructs"]}
            reported.setdefault(violation["ruleName"], set()).update(paths)
    owned = [(path, rule) for path, rule in asked if _is_pipeline_owned(path)]
    return Unacknowledged(asked=owned, reported=reported)


def _is_pipeline_owned(path: str) -> bool:
    if path.startswith("MmePipeline-artifacts-"):
        return True
    if path.startswith(("MmePipeline/Dev/", "MmePipeline/Prod/")):
        return "/PostDeployRole/" in path
    return path.startswith("MmePipeline/")


def test_every_acknowledged_finding_is_reported_on_the_resource_that_carries_it(unacknowledged: Unacknowledged) -> None:
    assert len(unacknowledged.asked) > 20
    stale = [
        (path, rule)
        for path, rule in unacknowledged.asked
        if not any(p == path or p.startswith(f"{path}/") for p in unacknowledged.reported.get(rule, set()))
    ]
    assert stale == []


def test_asset_roles_cannot_start_builds_and_log_only_to_their_own_project(pipeline_template: Template) -> None:
    resources = pipeline_template.to_json()["Resources"]
    asset_policies = {
        i: r for i, r in resources.items() if r["Type"] == "AWS::IAM::Policy" and i.startswith("PipelineAssets")
    }
    assert len(asset_policies) == 2  # the Docker and the file asset role
    for policy_id, policy in asset_policies.items():
        statements = policy["Properties"]["PolicyDocument"]["Statement"]
        assert not [s for s in statements if "codebuild:StartBuild" in str(s["Action"])], policy_id
        assert all(s["Resource"] != "*" for s in statements), policy_id
        (role,) = policy["Properties"]["Roles"]
        (project_id,) = [
            i
            for i, r in resources.items()
            if r["Type"] == "AWS::CodeBuild::Project"
            and r["Properties"]["ServiceRole"] == {"Fn::GetAtt": [role["Ref"], "Arn"]}
        ]
        logs = next(s for s in statements if "logs:PutLogEvents" in s["Action"])
        for resource in logs["Resource"]:
            assert {"Ref": project_id} in resource["Fn::Join"][1], (policy_id, resource)
