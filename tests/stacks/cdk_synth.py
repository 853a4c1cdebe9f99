"""Synthesis helpers shared by the tests/stacks tests (imported by conftest.py and the test modules).

Feature flags are injected only by the CDK CLI, so the app here is built with cdk.json's context loaded by hand,
plus a pipeline source, so every stack the pipeline deploys is synthesized exactly as `cdk synth` would.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from aws_cdk import App, Environment, Stage  # noqa: E402
from aws_cdk.assertions import Template  # noqa: E402

import app as cdk_app  # noqa: E402
from stacks.pipeline import PipelineStack  # noqa: E402
from stacks.settings import load_app_settings  # noqa: E402

TEST_ENV = Environment(account="111111111111", region="eu-west-1")
TEST_CONNECTION_ARN = "arn:aws:codeconnections:eu-west-1:111111111111:connection/0123abcd-0000-4000-8000-000000000000"


def cdk_json_context() -> dict[str, Any]:
    """The `context` block of cdk.json (feature flags + our defaults), as the CLI would pass it."""
    return dict(json.loads((REPO_ROOT / "cdk.json").read_text())["context"])


@dataclass(frozen=True)
class Synthesized:
    """A synthesized app: the pipeline stack and each stage's stacks, with their templates read from disk."""

    app: App
    pipeline: PipelineStack
    outdir: Path

    def template(self, stack: Any) -> Template:
        """`Template` of a synthesized stack, read from the cloud assembly (no second synth)."""
        stage = Stage.of(stack)
        assert stage is not None
        return Template.from_json(json.loads((Path(stage.outdir) / stack.template_file).read_text()))

    def stage(self, name: str) -> Any:
        """The `ServingStage` for stage `name` ("dev", "prod")."""
        return next(s for s in self.pipeline.stages if s.settings.name == name)

    def template_files(self) -> list[Path]:
        """Every CloudFormation template in the assembly, nested stage assemblies included."""
        return sorted(self.outdir.rglob("*.template.json"))


def synth_app(outdir: Path, extra_context: Mapping[str, Any] | None = None) -> Synthesized:
    """Build the app exactly as app.py does (cdk.json context + `extra_context`) and synthesize it to `outdir`."""
    context = cdk_json_context()
    context.update({"repository": "acme/mme", "branch": "main", "connection_arn": TEST_CONNECTION_ARN})
    context.update(extra_context or {})
    app = App(context=context, outdir=str(outdir))
    cdk_app.compose(app, load_app_settings(app.node.get_all_context()), default_env=TEST_ENV)
    app.synth()
    pipeline = app.node.find_child(cdk_app.PIPELINE_STACK_ID)
    assert isinstance(pipeline, PipelineStack)
    return Synthesized(app=app, pipeline=pipeline, outdir=outdir)


@contextmanager
def repo_scratch_dir() -> Iterator[Path]:
    """A fresh folder under the repository's gitignored `build/`, removed afterwards.

    For settings that name folders relative to the repository root (`default_tokenizer`): synth checks them there.
    """
    path = REPO_ROOT / "build" / f"test-stacks-{uuid.uuid4().hex[:12]}"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_tokenizer(folder: Path, words: list[str]) -> str:
    """A minimal WordPiece tokenizer folder (a `vocab.txt`) at `folder`; returns its path relative to the repo root."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words]) + "\n")
    return folder.relative_to(REPO_ROOT).as_posix()
