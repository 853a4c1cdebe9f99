"""The stage's default tokenizer: checked at synth, baked into the image, announced to the container."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Template
from cdk_synth import REPO_ROOT, Synthesized, synth_app, write_tokenizer

from stacks.settings import IMAGE_DEFAULT_TOKENIZER_DIR, SettingsError


def _model_environment(template: Template) -> dict[str, str]:
    (model,) = template.find_resources("AWS::SageMaker::Model").values()
    return model["Properties"]["PrimaryContainer"]["Environment"]


def _image_uri(template: Template) -> str:
    (model,) = template.find_resources("AWS::SageMaker::Model").values()
    return json.dumps(model["Properties"]["PrimaryContainer"]["Image"])


def _image_source(synthesized: Synthesized, stage_name: str) -> dict[str, Any]:
    """The endpoint image's build instructions in the stage's asset manifest (what `cdk deploy` builds from)."""
    stack = synthesized.stage(stage_name).endpoint
    manifest = json.loads((Path(stack.node.scope.outdir) / f"{stack.artifact_id}.assets.json").read_text())
    (image,) = manifest["dockerImages"].values()
    return image["source"]


def _synth_with(outdir: Path, dev: dict[str, Any]) -> Synthesized:
    return synth_app(outdir, {"stages": {"dev": dev, "prod": {}}})


@pytest.fixture(scope="module")
def tokenizer(repo_scratch: Path) -> str:
    return write_tokenizer(repo_scratch / "bert-like", ["hello", "world"])


@pytest.fixture(scope="module")
def with_tokenizer(tmp_path_factory: pytest.TempPathFactory, tokenizer: str) -> Synthesized:
    return _synth_with(tmp_path_factory.mktemp("tokenizer"), {"default_tokenizer": tokenizer})


@pytest.mark.parametrize(
    ("folder", "problem"),
    [
        ("tokenizers/no-such-tokenizer", "does not exist"),
        ("container/Dockerfile", "is not a folder"),
        ("container/default-tokenizer", "holds no tokenizer files (found ['README.md'])"),
    ],
)
def test_synth_refuses_a_default_tokenizer_folder_without_a_tokenizer(
    tmp_path: Path, folder: str, problem: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        _synth_with(tmp_path, {"default_tokenizer": folder})
    message = str(raised.value)
    for fragment in (
        "stages.dev.default_tokenizer",
        repr(folder),
        problem,
        "tokenizer.json, tokenizer_config.json, vocab.txt",
        f".save_pretrained('{folder}')",
        "commit the folder",
    ):
        assert fragment in message, message
    assert not list(tmp_path.glob("*.template.json")), "nothing may be synthesized"


def test_synth_refuses_a_default_tokenizer_linked_outside_the_repository(repo_scratch: Path, tmp_path: Path) -> None:
    outside = tmp_path / "tokenizer"
    outside.mkdir()
    (outside / "vocab.txt").write_text("[PAD]\n")
    link = repo_scratch / "linked-out"
    link.symlink_to(outside, target_is_directory=True)
    with pytest.raises(SettingsError, match="leaves the repository"):
        _synth_with(tmp_path / "out", {"default_tokenizer": link.relative_to(REPO_ROOT).as_posix()})


def test_model_container_is_told_where_the_baked_tokenizer_is(with_tokenizer: Synthesized) -> None:
    environment = _model_environment(with_tokenizer.template(with_tokenizer.stage("dev").endpoint))
    assert environment["MME_DEFAULT_TOKENIZER_DIR"] == IMAGE_DEFAULT_TOKENIZER_DIR == "/opt/mme/default-tokenizer"
    # A stage without the setting in the same app gets neither the variable nor the build argument.
    assert "MME_DEFAULT_TOKENIZER_DIR" not in _model_environment(
        with_tokenizer.template(with_tokenizer.stage("prod").endpoint)
    )
    assert "dockerBuildArgs" not in _image_source(with_tokenizer, "prod")


def test_image_is_built_with_the_tokenizer_folder_in_its_context(with_tokenizer: Synthesized, tokenizer: str) -> None:
    source = _image_source(with_tokenizer, "dev")
    assert source["dockerBuildArgs"] == {"DEFAULT_TOKENIZER": tokenizer}
    context = (Path(with_tokenizer.stage("dev").outdir) / source["directory"]).resolve()
    assert {p.name for p in context.iterdir()} == {"container", "handler", "build"}
    staged = sorted(p.relative_to(context).as_posix() for p in (context / "build").rglob("*") if p.is_file())
    assert staged == [f"{tokenizer}/vocab.txt"]  # the tokenizer only, nothing else from build/
    assert (context / tokenizer / "vocab.txt").read_text() == (REPO_ROOT / tokenizer / "vocab.txt").read_text()


def test_default_stages_have_no_default_tokenizer(synthesized: Synthesized, dev_endpoint: Template) -> None:
    assert "MME_DEFAULT_TOKENIZER_DIR" not in _model_environment(dev_endpoint)
    assert "dockerBuildArgs" not in _image_source(synthesized, "dev")


def test_another_tokenizer_is_another_image(
    tmp_path_factory: pytest.TempPathFactory, with_tokenizer: Synthesized, repo_scratch: Path
) -> None:
    with_default = _image_uri(with_tokenizer.template(with_tokenizer.stage("dev").endpoint))
    without = _image_uri(with_tokenizer.template(with_tokenizer.stage("prod").endpoint))
    assert with_default != without

    # The same folder with an edited tokenizer: the tokenizer is versioned with the image, so the image changes.
    folder = write_tokenizer(repo_scratch / "edited", ["hello", "world"])
    before = _synth_with(tmp_path_factory.mktemp("before"), {"default_tokenizer": folder})
    write_tokenizer(repo_scratch / "edited", ["hello", "world", "again"])
    after = _synth_with(tmp_path_factory.mktemp("after"), {"default_tokenizer": folder})
    uris = [_image_uri(s.template(s.stage("dev").endpoint)) for s in (before, after)]
    assert uris[0] != uris[1]
    assert without == _image_uri(after.template(after.stage("prod").endpoint))  # the hash is deterministic
