"""Offline checks of the synthesized app: cdk-nag, cfn-lint, checkov, hadolint and the real CDK CLI's synth.

checkov and hadolint live in `.venv-checkov` (created by scripts/setup-cdk.sh; checkov's pins conflict with the
serving runtime's), the CLI in node_modules (`npm ci`). A missing tool fails with the command that installs it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from aws_cdk import App, Stack, Validations
from aws_cdk import aws_iam as iam
from cdk_nag import AwsSolutionsChecks
from cdk_synth import REPO_ROOT, Synthesized, cdk_json_context

CFN_LINT = Path(sys.executable).parent / "cfn-lint"
CHECKOV_VENV = REPO_ROOT / ".venv-checkov" / "bin"
SETUP_HINT = "run `bash scripts/setup-cdk.sh` (or `make setup`) first"


def _tool(path: Path) -> str:
    if not path.exists():
        pytest.fail(f"{path} is missing: {SETUP_HINT}")
    return str(path)


def _run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"}
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False, **kwargs)  # type: ignore[call-overload]


def test_cdk_nag_report_has_no_unacknowledged_findings(synthesized: Synthesized) -> None:
    report = json.loads((synthesized.outdir / "validation-report.json").read_text())
    for plugin in report["pluginReports"]:
        assert plugin["violations"] == [], plugin["violations"][:3]


def test_cdk_nag_is_active_and_fails_synth_on_an_unacknowledged_wildcard(tmp_path: Path) -> None:
    # Guards the check above: without the plugin an empty report would prove nothing.
    app = App(context=cdk_json_context(), outdir=str(tmp_path))
    stack = Stack(app, "Probe")
    role = iam.Role(stack, "Role", assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"))
    role.add_to_policy(iam.PolicyStatement(actions=["s3:*"], resources=["*"]))
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    with pytest.raises(Exception, match="AwsSolutions-IAM5"):
        app.synth()


def test_every_acknowledgement_has_a_specific_reason(synthesized: Synthesized) -> None:
    reasons: list[str] = []
    for construct in synthesized.app.node.find_all():
        for entry in construct.node.metadata:
            if entry.type == Validations.ACKNOWLEDGED_RULES_METADATA_KEY:
                reasons += [str(reason) for reason in dict(entry.data).values()]
    assert reasons, "expected the documented acknowledgements"
    for reason in reasons:
        assert len(reason) >= 40, reason


def test_cfn_lint_is_clean_on_every_template(synthesized: Synthesized) -> None:
    templates = [str(p) for p in synthesized.template_files()]
    assert len(templates) == 5  # pipeline + 2 stages x (model store, endpoint)
    result = _run([str(CFN_LINT), *templates])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_checkov_is_clean_on_the_templates(synthesized: Synthesized) -> None:
    checkov = _tool(CHECKOV_VENV / "checkov")
    result = _run(
        [
            checkov,
            "-d",
            str(synthesized.outdir),
            "--framework",
            "cloudformation",
            "--compact",
            "--quiet",
            "--skip-download",
            "--output",
            "json",
        ]
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = json.loads(result.stdout)["summary"]
    assert summary["failed"] == 0
    assert summary["passed"] > 100  # it really scanned the templates


def test_checkov_is_clean_on_the_dockerfile() -> None:
    checkov = _tool(CHECKOV_VENV / "checkov")
    result = _run(
        [
            checkov,
            "-f",
            str(REPO_ROOT / "container" / "Dockerfile"),
            "--framework",
            "dockerfile",
            "--compact",
            "--quiet",
            "--skip-download",
            "--output",
            "json",
        ]
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert json.loads(result.stdout)["summary"]["failed"] == 0


def test_hadolint_is_clean_on_the_dockerfile() -> None:
    hadolint = _tool(CHECKOV_VENV / "hadolint")
    result = _run(
        [hadolint, "--config", str(REPO_ROOT / ".hadolint.yaml"), str(REPO_ROOT / "container" / "Dockerfile")]
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_real_cdk_cli_synth_succeeds_without_warnings(tmp_path: Path) -> None:
    npx = shutil.which("npx")
    assert npx, "Node.js/npx is required for the CDK CLI"
    _tool(REPO_ROOT / "node_modules" / ".bin" / "cdk")
    result = _run([npx, "--no-install", "cdk", "synth", "--quiet", "--no-notices", "-o", str(tmp_path)], cwd=REPO_ROOT)
    # The machine-wide npm config may warn about its own keys; that is npm's output, not the app's.
    lines = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and not line.startswith("npm warn Unknown user config")
    ]
    assert result.returncode == 0, "\n".join(lines)
    assert not [line for line in lines if "warn" in line.lower() or "error" in line.lower()], lines
    assert any(line.startswith("Successfully synthesized") for line in lines), lines
    templates = sorted(tmp_path.rglob("*.template.json"))
    assert templates  # the default cdk.json (no repository) synthesizes the stages directly
    lint = _run([str(CFN_LINT), *map(str, templates)])
    assert lint.returncode == 0, lint.stdout + lint.stderr
