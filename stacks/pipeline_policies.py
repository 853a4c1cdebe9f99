"""The policies CDK Pipelines generates for its roles: narrowed where it over-grants, acknowledged where it must not.

`narrow_asset_roles` rewrites the asset-publishing roles' policies (an escape hatch: CDK Pipelines has no prop for
them). `acknowledge_generated_policies` acknowledges, on each generated policy itself, exactly the cdk-nag IAM5
findings that policy has and that `PipelineGrantExplainer` can explain statement by statement; a wildcard it cannot
explain stays unacknowledged and fails synth, so a new CDK Pipelines grant is read before it is accepted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jsii
from aws_cdk import Acknowledgment, ArnFormat, IAnyProducer, IResolveContext, Lazy, Stack, Validations
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_iam as iam
from constructs import Construct

from stacks.nag import nag_resource

Statement = dict[str, Any]
#: Finding id (`Action::...` / `Resource::...`) -> why it is acceptable.
Reasons = dict[str, str]

CODEBUILD_BUILD_ACTIONS = frozenset({"codebuild:BatchGetBuilds", "codebuild:StartBuild", "codebuild:StopBuild"})
CODEBUILD_LOG_ACTIONS = frozenset({"logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"})
CODEBUILD_REPORT_ACTIONS = frozenset(
    {
        "codebuild:BatchPutCodeCoverages",
        "codebuild:BatchPutTestCases",
        "codebuild:CreateReport",
        "codebuild:CreateReportGroup",
        "codebuild:UpdateReport",
    }
)
SELF_MUTATION_LOOKUP_ACTIONS = frozenset({"cloudformation:DescribeStacks", "s3:ListBucket"})
BOOTSTRAP_ROLE_TAG = "iam:ResourceTag/aws-cdk:bootstrap-role"
RESOURCE_ALIASES = "kms:ResourceAliases"

#: What each wildcard action of CDK's bucket and key grants expands to (Service Authorization Reference, Amazon S3
#: and AWS KMS actions).
ACTION_MEANINGS = {
    "s3:Abort*": "s3:AbortMultipartUpload, abandon an upload",
    "s3:DeleteObject*": "s3:DeleteObject, DeleteObjectVersion, DeleteObjectTagging, DeleteObjectVersionTagging",
    "s3:GetBucket*": "s3:GetBucketLocation, GetBucketPolicy, GetBucketVersioning and the other reads of the "
    "bucket's configuration",
    "s3:GetObject*": "s3:GetObject, GetObjectVersion, GetObjectAcl, GetObjectTagging, GetObjectAttributes and the "
    "other reads of objects and their metadata",
    "s3:List*": "s3:ListBucket, ListBucketVersions, ListBucketMultipartUploads, ListMultipartUploadParts and the "
    "other lists of the bucket's keys and uploads",
    "kms:GenerateDataKey*": "kms:GenerateDataKey, GenerateDataKeyWithoutPlaintext, GenerateDataKeyPair, "
    "GenerateDataKeyPairWithoutPlaintext, to encrypt new artifacts",
    "kms:ReEncrypt*": "kms:ReEncryptFrom, ReEncryptTo",
}


def narrow_asset_roles(assets: Construct) -> None:
    """Scope the asset-publishing roles CDK Pipelines creates under `assets` (its "Assets" construct).

    CDK Pipelines' AssetSingletonRole is written for a role shared by asset projects created after it: logs on
    every `/aws/codebuild/*` group, reports on every report group, and codebuild:BatchGetBuilds/StartBuild/StopBuild
    on `*`. The last lets a build that runs this repository's Docker build start any CodeBuild project of the
    account with a buildspec override, i.e. run commands as that project's role (the self-mutation role can
    deploy anything). The pipeline starts the asset builds with its own CodeBuild action role, and only CodeBuild
    may assume these roles, so nothing needs it: it is removed, and logs and reports are scoped to the projects
    that use the role. Done on the CfnPolicy's own property (lazily, after every grant is in), so cdk-nag and
    checkov see what is deployed.
    """
    for role in assets.node.children:
        if not isinstance(role, iam.Role):
            continue
        policy = role.node.try_find_child("DefaultPolicy")
        if policy is None:
            continue
        cfn_policy = policy.node.default_child
        assert isinstance(cfn_policy, iam.CfnPolicy)
        stack = Stack.of(role)
        projects = [
            project
            for project in assets.node.find_all()
            if isinstance(project, codebuild.CfnProject)
            and stack.resolve(project.service_role) == stack.resolve(role.role_arn)
        ]
        log_groups = [_log_group_arn(stack, project.ref) for project in projects]
        replacements: dict[frozenset[str], list[str]] = {
            CODEBUILD_LOG_ACTIONS: [arn for group in log_groups for arn in (group, f"{group}:*")],
            CODEBUILD_REPORT_ACTIONS: [_report_groups_arn(stack, project.ref) for project in projects],
        }

        def rewrite(
            statements: list[Statement], replacements: dict[frozenset[str], list[str]] = replacements
        ) -> list[Statement]:
            kept = []
            for statement in statements:
                actions = frozenset(_as_list(statement.get("Action")))
                if actions == CODEBUILD_BUILD_ACTIONS:
                    continue
                if actions in replacements:
                    statement = {**statement, "Resource": replacements[actions]}
                kept.append(statement)
            return kept

        cfn_policy.policy_document = Lazy.uncached_any(_RewrittenDocument(stack, cfn_policy.policy_document, rewrite))


@jsii.implements(IAnyProducer)
class _RewrittenDocument:
    """A policy document produced from another one with its statements rewritten (resolved at synth)."""

    def __init__(self, stack: Stack, document: Any, rewrite: Callable[[list[Statement]], list[Statement]]) -> None:
        self._stack = stack
        self._document = document
        self._rewrite = rewrite

    def produce(self, context: IResolveContext | None = None) -> Any:
        # The stack resolves, not `context`: jsii may call the producer without one.
        document = self._stack.resolve(self._document)
        return {**document, "Statement": self._stack.resolve(self._rewrite(list(document.get("Statement", []))))}


@dataclass(frozen=True)
class ArtifactGrantTargets:
    """The artifact stores' ARNs as cdk-nag prints them in the pipeline stack, with a name for each."""

    #: Bucket ARNs and object patterns (`<bucket ARN>/*`).
    buckets: Mapping[str, str]
    #: Key ARNs of keys in the pipeline's stack.
    keys: Mapping[str, str]
    #: `key/*` patterns of replication keys, with the alias that the kms:ResourceAliases condition must name.
    aliased_keys: Mapping[str, str]


@dataclass
class PipelineGrantExplainer:
    """Explains the wildcards of the statements CDK Pipelines generates for this pipeline, and nothing else.

    Props (all as cdk-nag prints them in the pipeline stack):
        artifacts: the artifact stores.
        projects: each CodeBuild project's name token (`<LogicalId>`), with a description of it.
        account: the pipeline's account.
        stage_roles: `role_arn_pattern` of each stage's post-deploy role, with the stage's name.
    """

    artifacts: ArtifactGrantTargets
    projects: Mapping[str, str]
    account: str
    stage_roles: Mapping[str, str] = field(default_factory=dict)

    def explain(self, statement: Statement, resources: list[str]) -> Reasons | None:
        """Reasons for the wildcard findings of one Allow statement, keyed by finding; None if it is not ours."""
        actions = frozenset(_as_list(statement.get("Action")))
        for explain in (
            self._artifact_access,
            self._codebuild_logs,
            self._codebuild_reports,
            self._bootstrap_roles,
            self._cli_lookups,
            self._stage_roles,
        ):
            reasons = explain(statement, actions, resources)
            if reasons is not None:
                return reasons
        return None

    def _artifact_access(self, statement: Statement, actions: frozenset[str], resources: list[str]) -> Reasons | None:
        artifacts = self.artifacts
        known = {**artifacts.buckets, **artifacts.keys, **artifacts.aliased_keys}
        if not resources or not set(resources) <= set(known):
            return None
        aliases = _condition_values(statement, "ForAnyValue:StringEquals", RESOURCE_ALIASES)
        if any(r in artifacts.aliased_keys and artifacts.aliased_keys[r] not in aliases for r in resources):
            return None  # a key pattern without the condition that limits it to the replication key
        targets = ", ".join(sorted({known[r] for r in resources}))
        reasons: Reasons = {}
        for action in sorted(a for a in actions if "*" in a):
            if action not in ACTION_MEANINGS:
                return None
            reasons[f"Action::{action}"] = (
                f"{action} ({ACTION_MEANINGS[action]}) only on {targets}: CDK's bucket/key grant for a role that reads "
                "or writes the pipeline's artifacts; nothing outside the artifact stores."
            )
        for resource in resources:
            if "*" not in resource:
                continue
            if resource in artifacts.aliased_keys:
                reasons[f"Resource::{resource}"] = (
                    f"kms actions on any key of this account and region, limited by the {RESOURCE_ALIASES} condition "
                    f"to the key behind {artifacts.aliased_keys[resource]} ({known[resource]}): a stack in another "
                    "region cannot reference that key's ARN (it holds a random id), only its alias."
                )
            else:
                reasons[f"Resource::{resource}"] = (
                    f"Objects of {known[resource]}: CodePipeline stores every artifact of every run under a "
                    "generated key, so no fixed key can be listed; the bucket holds nothing but artifacts."
                )
        return reasons

    def _codebuild_logs(self, statement: Statement, actions: frozenset[str], resources: list[str]) -> Reasons | None:
        if actions != CODEBUILD_LOG_ACTIONS:
            return None
        reasons = {}
        for resource in resources:
            project = self._project_of(resource, "log-group:/aws/codebuild/", ("", ":*"))
            if project is None:
                return None
            if resource.endswith(":*"):
                reasons[f"Resource::{resource}"] = (
                    f"Log streams of the log group of {self.projects[project]} only: CodeBuild writes one stream per "
                    "build, with a generated name."
                )
        return reasons

    def _codebuild_reports(self, statement: Statement, actions: frozenset[str], resources: list[str]) -> Reasons | None:
        if actions != CODEBUILD_REPORT_ACTIONS:
            return None
        reasons = {}
        for resource in resources:
            project = self._project_of(resource, "report-group/", ("-*",))
            if project is None:
                return None
            reasons[f"Resource::{resource}"] = (
                f"Test report groups of {self.projects[project]} only (CodeBuild names them <project>-<report "
                "group>); CDK grants them to every project it creates, these steps define no reports."
            )
        return reasons

    def _bootstrap_roles(self, statement: Statement, actions: frozenset[str], resources: list[str]) -> Reasons | None:
        tags = _condition_values(statement, "ForAnyValue:StringEquals", BOOTSTRAP_ROLE_TAG)
        pattern = f"arn:*:iam::{self.account}:role/*"
        if actions != {"sts:AssumeRole"} or list(resources) != [pattern] or not tags:
            return None
        return {
            f"Resource::{pattern}": f"sts:AssumeRole on the roles of the pipeline account tagged "
            f"aws-cdk:bootstrap-role = {', '.join(sorted(tags))} only (condition {BOOTSTRAP_ROLE_TAG}): CDK "
            "Pipelines' self-mutation runs `cdk deploy` of the pipeline stack, and of its artifact replication "
            "stacks in other regions, through the CDK bootstrap roles of each region."
        }

    def _cli_lookups(self, statement: Statement, actions: frozenset[str], resources: list[str]) -> Reasons | None:
        if not actions or not actions <= SELF_MUTATION_LOOKUP_ACTIONS or list(resources) != ["*"]:
            return None
        return {
            "Resource::*": f"Only {' and '.join(sorted(actions))} use '*': CDK Pipelines grants them to the "
            "self-mutation step so the CDK CLI can read any stack's status and outputs and list the object keys of "
            "any bucket in the pipeline account before it assumes the bootstrap deploy role. No object reads, no "
            "writes; CDK Pipelines has no prop to narrow them."
        }

    def _stage_roles(self, statement: Statement, actions: frozenset[str], resources: list[str]) -> Reasons | None:
        if actions != {"sts:AssumeRole"} or not resources or not set(resources) <= set(self.stage_roles):
            return None
        return {
            f"Resource::{resource}": f"sts:AssumeRole on the post-deploy role of stage {self.stage_roles[resource]} "
            "only: CloudFormation completes its name with a random suffix (the exact ARN is read from the stack "
            "output at run time); the role may only invoke the stage's endpoint and protect its stacks."
            for resource in resources
        }

    def _project_of(self, resource: str, infix: str, suffixes: Iterable[str]) -> str | None:
        for project in self.projects:
            for suffix in suffixes:
                if resource.endswith(f"{infix}{project}{suffix}") and resource.startswith("arn:"):
                    return project
        return None


def acknowledge_generated_policies(scope: Construct, explainer: PipelineGrantExplainer) -> None:
    """Acknowledge, on each CfnPolicy under `scope`, the IAM5 findings `explainer` explains for that policy.

    A finding is acknowledged only when every statement of the policy that produces it is explained.
    """
    for policy in scope.node.find_all():
        if not isinstance(policy, iam.CfnPolicy):
            continue
        document = Stack.of(policy).resolve(policy.policy_document)
        reasons: dict[str, str] = {}
        unexplained: set[str] = set()
        for statement in document.get("Statement", []):
            if statement.get("Effect") != "Allow":
                continue
            resources = [nag_resource(policy, r) for r in _as_list(statement.get("Resource"))]
            findings = {f"Action::{a}" for a in _as_list(statement.get("Action")) if "*" in a} | {
                f"Resource::{r}" for r in resources if "*" in r
            }
            explained = explainer.explain(statement, resources) or {}
            unexplained |= findings - set(explained)
            for finding in findings & set(explained):
                reasons[finding] = explained[finding]
        acknowledgements = [
            Acknowledgment(id=f"AwsSolutions-IAM5[{finding}]", reason=reason)
            for finding, reason in sorted(reasons.items())
            if finding not in unexplained
        ]
        if acknowledgements:
            Validations.of(policy).acknowledge(*acknowledgements)


def _log_group_arn(stack: Stack, project_name: str) -> str:
    return stack.format_arn(
        service="logs",
        resource="log-group",
        resource_name=f"/aws/codebuild/{project_name}",
        arn_format=ArnFormat.COLON_RESOURCE_NAME,
    )


def _report_groups_arn(stack: Stack, project_name: str) -> str:
    return stack.format_arn(service="codebuild", resource="report-group", resource_name=f"{project_name}-*")


def _condition_values(statement: Statement, operator: str, key: str) -> list[str]:
    return [str(v) for v in _as_list(statement.get("Condition", {}).get(operator, {}).get(key))]


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]
