"""Shared fixtures: one real synth of the whole app (pipeline mode, dev + prod) per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from aws_cdk.assertions import Template
from cdk_synth import Synthesized, repo_scratch_dir, synth_app


@pytest.fixture(scope="session")
def synthesized(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    """The whole app, synthesized once for the session (dev + prod stages from cdk.json)."""
    return synth_app(tmp_path_factory.mktemp("cdk.out"))


@pytest.fixture(scope="session")
def dev_store(synthesized: Synthesized) -> Template:
    return synthesized.template(synthesized.stage("dev").model_store)


@pytest.fixture(scope="session")
def dev_endpoint(synthesized: Synthesized) -> Template:
    return synthesized.template(synthesized.stage("dev").endpoint)


@pytest.fixture(scope="session")
def pipeline_template(synthesized: Synthesized) -> Template:
    return synthesized.template(synthesized.pipeline)


@pytest.fixture(scope="module")
def repo_scratch() -> Iterator[Path]:
    """A folder under the repository's `build/` for the module's tokenizer folders, removed after the module."""
    with repo_scratch_dir() as path:
        yield path
