"""Stages in other accounts and regions: each combination synthesizes with cdk-nag passing, the artifacts stay
readable (and encrypted with customer-managed keys) where prod deploys, the smoke test acts in prod's account and
region through prod's post-deploy role, and no retained artifact bucket is encrypted with a key that is not kept.

The pipeline runs in 111111111111/eu-west-1 (tests/stacks/cdk_synth.py); dev stays there, prod moves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App, Environment, Stack
from cdk_synth import REPO_ROOT, TEST_CONNECTION_ARN, Synthesized, cdk_json_context, synth_app

import app as cdk_app
from stacks.pipeline_steps import StagePostDeployRole
from stacks.settings import SettingsError, load_app_settings

PIPELINE_ACCOUNT, PIPELINE_REGION = "111111111111", "eu-west-1"
OTHER_ACCOUNT, OTHER_REGION = "222222222222", "us-east-1"
#: prod's settings per case; dev always deploys where the pipeline runs.
CASES: dict[str, dict[str, str]] = {
    "same-environment": {},
    "cross-region": {"region": OTHER_REGION},
    "cross-account": {"account": OTHER_ACCOUNT},
    "cross-account-and-region": {"account": OTHER_ACCOUNT, "region": OTHER_REGION},
}
RETAINED = {"Retain", "RetainExceptOnCreate"}
CFN_LINT = Path(sys.executable).parent / "cfn-lint"
CHECKOV = REPO_ROOT / ".venv-checkov" / "bin" / "checkov"


@dataclass(frozen=True)
class Case:
    name: str
    synthesized: Synthesized
    account: str
    region: str

    @property
    def cross_account(self) -> bool:
        return self.account != PIPELINE_ACCOUNT

    @property
    def cross_region(self) -> bool:
        return self.region != PIPELINE_REGION

    def pipeline(self) -> dict[str, Any]:
        return _template_json(self.synthesized.outdir / "MmePipeline.template.json")

    def replication_templates(self) -> dict[str, dict[str, Any]]:
        """Templates of the artifact replication stacks, by region."""
        return {
            path.name.removeprefix("MmePipeline-artifacts-").removesuffix(".template.json"): _template_json(path)
            for path in self.synthesized.outdir.glob("MmePipeline-artifacts-*.template.json")
        }

    def pipeline_template_files(self) -> list[Path]:
        """The pipeline's own templates: its stack and its artifact replication stacks (not the stages')."""
        return sorted(self.synthesized.outdir.glob("MmePipeline*.template.json"))

    def prod_endpoint(self) -> dict[str, Any]:
        return self.synthesized.template(self.synthesized.stage("prod").endpoint).to_json()


@pytest.fixture(scope="module", params=list(CASES))
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Case:
    prod = CASES[request.param]
    synthesized = synth_app(tmp_path_factory.mktemp(f"cdk.out-{request.param}"), {"stages": {"dev": {}, "prod": prod}})
    return Case(
        name=request.param,
        synthesized=synthesized,
        account=prod.get("account", PIPELINE_ACCOUNT),
        region=prod.get("region", PIPELINE_REGION),
    )


def test_cdk_nag_passes(case: Case) -> None:
    # synth_app would have raised on a finding; the report also says so, per plugin.
    report = json.loads((case.synthesized.outdir / "validation-report.json").read_text())
    for plugin in report["pluginReports"]:
        assert plugin["violations"] == [], plugin["violations"][:3]


def test_prod_deploys_through_its_own_accounts_deploy_role_in_its_region(case: Case) -> None:
    actions = _actions(case.pipeline(), "Prod")
    deploys = [a for a in actions.values() if a["ActionTypeId"]["Provider"] == "CloudFormation"]
    assert deploys
    for action in deploys:
        assert action.get("Region", PIPELINE_REGION) == case.region
        role = _flat(action["RoleArn"])
        assert role.endswith(f":iam::{case.account}:role/cdk-hnb659fds-deploy-role-{case.account}-{case.region}")


def test_every_artifact_store_is_encrypted_with_a_customer_managed_key(case: Case) -> None:
    pipeline = case.pipeline()
    properties = _pipeline_properties(pipeline)
    stores = (
        [s["ArtifactStore"] for s in properties["ArtifactStores"]]
        if "ArtifactStores" in properties
        else [properties["ArtifactStore"]]
    )
    assert [s.get("Region") for s in properties.get("ArtifactStores", [])] == (
        [PIPELINE_REGION, OTHER_REGION] if case.cross_region else []
    )
    for store in stores:
        assert store["EncryptionKey"]["Type"] == "KMS"
        key_id = store["EncryptionKey"]["Id"]
        # This stack's key, or a replication store's alias (a key ARN from another region is not referenceable).
        assert key_id == {"Fn::GetAtt": [_logical_id(pipeline, "AWS::KMS::Key"), "Arn"]} or _flat(key_id).startswith(
            f"arn:aws:kms:{OTHER_REGION}:{PIPELINE_ACCOUNT}:alias/"
        )


def test_the_key_of_prods_artifact_store_lets_prods_deploy_role_decrypt_when_prod_is_another_account(
    case: Case,
) -> None:
    # What crossAccountKeys does for CDK's own buckets: the key policy names the other account's deploy role.
    # Same region: the pipeline's own key; another region: the key of that region's replication store.
    template = case.replication_templates()[case.region] if case.cross_region else case.pipeline()
    (key,) = _resources(template, "AWS::KMS::Key").values()
    deploy_role = f"arn:aws:iam::{OTHER_ACCOUNT}:role/cdk-hnb659fds-deploy-role-{OTHER_ACCOUNT}-{case.region}"
    grants = [
        s
        for s in key["Properties"]["KeyPolicy"]["Statement"]
        if deploy_role in [_flat(p).replace("<AWS::Partition>", "aws") for p in _as_list(s["Principal"].get("AWS"))]
    ]
    if not case.cross_account:
        assert grants == []
        return
    assert len(grants) == 1
    assert set(_as_list(grants[0]["Action"])) == {"kms:Decrypt", "kms:DescribeKey"}


def test_a_replication_store_exists_exactly_for_another_region_and_cdks_support_stack_does_not(case: Case) -> None:
    assert not list(case.synthesized.outdir.rglob("cross-region-stack-*"))
    assert set(case.replication_templates()) == ({OTHER_REGION} if case.cross_region else set())


def test_the_replication_bucket_is_kms_encrypted_logged_ssl_only_and_expires_artifacts(case: Case) -> None:
    if not case.cross_region:
        assert case.replication_templates() == {}
        return
    template = case.replication_templates()[OTHER_REGION]
    (key_id,) = _resources(template, "AWS::KMS::Key")
    (alias,) = _resources(template, "AWS::KMS::Alias").values()
    assert alias["Properties"]["TargetKeyId"] == {"Fn::GetAtt": [key_id, "Arn"]}
    alias_name = alias["Properties"]["AliasName"]
    buckets = _resources(template, "AWS::S3::Bucket")
    artifact_id = next(i for i, b in buckets.items() if "BucketName" in b["Properties"])
    bucket = buckets[artifact_id]["Properties"]
    (rule,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms",
        "KMSMasterKeyID": f"arn:aws:kms:{OTHER_REGION}:{PIPELINE_ACCOUNT}:{alias_name}",
    }
    assert _resources(template, "AWS::KMS::Key")[key_id]["Properties"]["EnableKeyRotation"] is True
    (log_bucket_id,) = set(buckets) - {artifact_id}
    assert bucket["LoggingConfiguration"]["DestinationBucketName"] == {"Ref": log_bucket_id}
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    assert bucket["LifecycleConfiguration"]["Rules"][0]["ExpirationInDays"] == 30
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    for bucket_id in buckets:
        policy = next(
            p
            for p in _resources(template, "AWS::S3::BucketPolicy").values()
            if p["Properties"]["Bucket"] == {"Ref": bucket_id}
        )
        assert {
            "Action": "s3:*",
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            "Effect": "Deny",
            "Principal": {"AWS": "*"},
        }.items() <= policy["Properties"]["PolicyDocument"]["Statement"][0].items()
    # CodePipeline stores prod's artifacts there, encrypted through that alias.
    (store,) = [s for s in _pipeline_properties(case.pipeline())["ArtifactStores"] if s["Region"] == OTHER_REGION]
    assert store["ArtifactStore"]["Location"] == bucket["BucketName"]
    assert store["ArtifactStore"]["EncryptionKey"]["Id"] == rule["ServerSideEncryptionByDefault"]["KMSMasterKeyID"]


def test_the_pipeline_role_uses_the_replication_key_only_through_its_alias(case: Case) -> None:
    statements = [
        s
        for p in _resources(case.pipeline(), "AWS::IAM::Policy").values()
        for s in p["Properties"]["PolicyDocument"]["Statement"]
        if any(a.startswith("kms:") for a in _as_list(s["Action"]))
    ]
    assert all(s["Resource"] != "*" for s in statements)  # what CDK's generated support stack would grant
    by_pattern = [s for s in statements if _flat(s["Resource"]).endswith(":key/*")]
    if not case.cross_region:
        assert by_pattern == []
        return
    assert by_pattern
    for statement in by_pattern:
        assert statement["Resource"] == f"arn:aws:kms:{OTHER_REGION}:{PIPELINE_ACCOUNT}:key/*"
        assert statement["Condition"] == {
            "ForAnyValue:StringEquals": {"kms:ResourceAliases": f"alias/MmePipeline-artifacts-{OTHER_REGION}"}
        }


def test_the_smoke_test_assumes_prods_post_deploy_role_and_invokes_in_prods_region(case: Case) -> None:
    pipeline = case.pipeline()
    smoke = _actions(pipeline, "Prod")["SmokeTestProd"]
    project = _resources(pipeline, "AWS::CodeBuild::Project")[smoke["Configuration"]["ProjectName"]["Ref"]]
    commands = json.loads(project["Properties"]["Source"]["BuildSpec"])["phases"]["build"]["commands"]
    assert 'aws configure set role_arn "$STAGE_ROLE_ARN" --profile stage' in commands
    assert "aws configure set credential_source EcsContainer --profile stage" in commands
    (invoke,) = [c for c in commands if "invoke-endpoint" in c]
    assert f"--profile stage --region {case.region} " in invoke
    # A sleeping stage has no endpoint: the same command reads the switch first and skips, so the deploy succeeds
    # and nothing wakes it.
    assert invoke.startswith(
        f'STATE=$(aws ssm get-parameter --profile stage --region {case.region} --name "$SWITCH_PARAMETER"'
    )
    assert '&& if [ "$STATE" = asleep ]; then echo "The stage sleeps' in invoke
    assert invoke.index("smoke test skipped") < invoke.index("; else {") < invoke.index("invoke-endpoint")
    env = {v["name"]: v["value"] for v in json.loads(smoke["Configuration"]["EnvironmentVariables"])}
    assert env["STAGE_ROLE_ARN"].endswith(".PostDeployRoleArn}")
    project_env = {v["Name"]: v["Value"] for v in project["Properties"]["Environment"]["EnvironmentVariables"]}
    assert project_env["SWITCH_PARAMETER"] == "/mme/prod/endpoint-state"
    # The step's own role may assume prod's post-deploy role and nothing else.
    statements = _role_statements(pipeline, project["Properties"]["ServiceRole"])
    assume = [s for s in statements if "sts:AssumeRole" in _as_list(s["Action"])]
    assert assume == [
        {
            "Action": "sts:AssumeRole",
            "Effect": "Allow",
            "Resource": f"arn:aws:iam::{case.account}:role/Mme-prod-Endpoint-PostDeployRole-*",
        }
    ]


def test_prods_post_deploy_role_trusts_the_pipeline_account_and_only_invokes_reads_the_switch_and_protects(
    case: Case,
) -> None:
    endpoint = case.prod_endpoint()
    role = endpoint["Resources"]["PostDeployRole"]
    assert role["Type"] == "AWS::IAM::Role"
    assert "RoleName" not in role["Properties"]  # generated: Mme-prod-Endpoint-PostDeployRole-<suffix>
    (trust,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"AWS": f"arn:aws:iam::{PIPELINE_ACCOUNT}:root"}
    statements = [
        s
        for p in _resources(endpoint, "AWS::IAM::Policy").values()
        if p["Properties"]["Roles"] == [{"Ref": "PostDeployRole"}]
        for s in p["Properties"]["PolicyDocument"]["Statement"]
    ]
    arn = f"{case.region}:{case.account}"
    assert statements == [
        {
            "Action": "sagemaker:InvokeEndpoint",
            "Effect": "Allow",
            "Resource": f"arn:aws:sagemaker:{arn}:endpoint/mme-prod-endpoint",
            "Sid": "InvokeTheStageEndpoint",
        },
        {
            # The smoke test skips a sleeping stage; it may read the switch and nothing else in SSM.
            "Action": "ssm:GetParameter",
            "Effect": "Allow",
            "Resource": f"arn:aws:ssm:{arn}:parameter/mme/prod/endpoint-state",
            "Sid": "ReadTheSleepSwitch",
        },
        {
            "Action": "cloudformation:UpdateTerminationProtection",
            "Effect": "Allow",
            "Resource": [
                f"arn:aws:cloudformation:{arn}:stack/Mme-prod-Endpoint/*",
                f"arn:aws:cloudformation:{arn}:stack/Mme-prod-ModelStore/*",
            ],
            "Sid": "ProtectTheStageStacks",
        },
    ]
    assert endpoint["Outputs"]["PostDeployRoleArn"]["Value"] == {"Fn::GetAtt": ["PostDeployRole", "Arn"]}


def test_no_retained_bucket_is_encrypted_with_a_key_that_is_not_retained(case: Case) -> None:
    templates = {"MmePipeline": case.pipeline()} | {
        f"replication {region}": t for region, t in case.replication_templates().items()
    }
    checked = 0
    for name, template in templates.items():
        resources = template["Resources"]
        for bucket_id, bucket in _resources(template, "AWS::S3::Bucket").items():
            if bucket.get("DeletionPolicy", "Delete") not in RETAINED:
                continue
            for rule in bucket["Properties"].get("BucketEncryption", {}).get("ServerSideEncryptionConfiguration", []):
                key_ref = rule["ServerSideEncryptionByDefault"].get("KMSMasterKeyID")
                if key_ref is None:
                    continue  # SSE-S3: nothing to lose
                key_id = _key_behind(template, key_ref)
                assert resources[key_id].get("DeletionPolicy", "Delete") in RETAINED, (name, bucket_id, key_id)
                checked += 1
    assert checked == len(templates)  # every artifact bucket was looked at


def test_cfn_lint_is_clean_on_the_pipelines_templates(case: Case) -> None:
    # The stages' own templates are linted by test_offline_checks.py.
    templates = [str(p) for p in case.pipeline_template_files()]
    assert len(templates) == (2 if case.cross_region else 1)
    result = subprocess.run([str(CFN_LINT), *templates], capture_output=True, text=True, check=False, env=_tool_env())
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("case", ["cross-account-and-region"], indirect=True)
def test_checkov_is_clean_with_stages_in_another_account_and_region(case: Case) -> None:
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} is missing: run `bash scripts/setup-cdk.sh` (or `make setup`) first")
    result = subprocess.run(
        [
            str(CHECKOV),
            *(arg for path in case.pipeline_template_files() for arg in ("-f", str(path))),
            *("--framework", "cloudformation"),
            *("--compact", "--quiet", "--skip-download", "--output", "json"),
        ],
        capture_output=True,
        text=True,
        check=False,
        env=_tool_env(),
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert json.loads(result.stdout)["summary"]["failed"] == 0


@pytest.mark.parametrize("key", ["account", "region"])
def test_a_stage_account_or_region_needs_the_pipelines_own_at_synth(key: str, tmp_path: Path) -> None:
    context = cdk_json_context() | {"repository": "acme/mme", "connection_arn": TEST_CONNECTION_ARN}
    context["stages"] = {"dev": {}, "prod": {key: {"account": OTHER_ACCOUNT, "region": OTHER_REGION}[key]}}
    app = App(context=context, outdir=str(tmp_path))
    with pytest.raises(SettingsError, match=rf"'stages\.prod\.{key}' is set but the pipeline's own {key} is unknown"):
        cdk_app.compose(app, load_app_settings(app.node.get_all_context()), default_env=Environment())


def test_a_stack_name_too_long_for_the_post_deploy_roles_name_fails_synth() -> None:
    stack = Stack(App(), "Long", stack_name="Mme-" + "x" * 40 + "-Endpoint")
    with pytest.raises(SettingsError, match="too long for the pipeline's post-deploy role"):
        StagePostDeployRole(
            stack, "PostDeployRole", pipeline_account=PIPELINE_ACCOUNT, endpoint_name=None, protected_stacks=[]
        )


def _tool_env() -> dict[str, str]:
    return {**os.environ, "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"}


def _template_json(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def _resources(template: dict[str, Any], resource_type: str) -> dict[str, Any]:
    return {i: r for i, r in template["Resources"].items() if r["Type"] == resource_type}


def _logical_id(template: dict[str, Any], resource_type: str) -> str:
    (logical_id,) = _resources(template, resource_type)
    return str(logical_id)


def _pipeline_properties(template: dict[str, Any]) -> dict[str, Any]:
    (pipeline,) = _resources(template, "AWS::CodePipeline::Pipeline").values()
    return dict(pipeline["Properties"])


def _actions(template: dict[str, Any], stage: str) -> dict[str, Any]:
    (actions,) = [s["Actions"] for s in _pipeline_properties(template)["Stages"] if s["Name"] == stage]
    return {a["Name"]: a for a in actions}


def _role_statements(template: dict[str, Any], role_arn: Any) -> list[dict[str, Any]]:
    role_id = role_arn["Fn::GetAtt"][0]
    return [
        s
        for p in _resources(template, "AWS::IAM::Policy").values()
        if {"Ref": role_id} in p["Properties"]["Roles"]
        for s in p["Properties"]["PolicyDocument"]["Statement"]
    ]


def _key_behind(template: dict[str, Any], key_ref: Any) -> str:
    """Logical ID of the AWS::KMS::Key a bucket's KMSMasterKeyID names (its ARN, or an alias of this template)."""
    if isinstance(key_ref, dict) and "Fn::GetAtt" in key_ref:
        return str(key_ref["Fn::GetAtt"][0])
    flat = _flat(key_ref)
    for alias in _resources(template, "AWS::KMS::Alias").values():
        if flat.endswith(f":{alias['Properties']['AliasName']}"):
            return str(alias["Properties"]["TargetKeyId"]["Fn::GetAtt"][0])
    raise AssertionError(f"cannot tell which key {key_ref!r} is")


def _flat(value: Any) -> str:
    """An intrinsic as a comparable string: Fn::Join concatenated, Ref as <Id>."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return ",".join(_flat(v) for v in value)
    if isinstance(value, dict) and "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return str(separator).join(_flat(p) for p in parts)
    if isinstance(value, dict) and "Ref" in value:
        return f"<{value['Ref']}>"
    return json.dumps(value)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]
