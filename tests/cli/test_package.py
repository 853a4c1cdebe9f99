"""`mme package`: building a model archive from a SavedModel and a tokenizer, validated by the handler."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mme.archive import extract_archive, validate_model_dir
from mme.cli import app

runner = CliRunner()


@pytest.fixture
def inputs(demo_model_dirs: dict[str, Path], demo_tokenizer: Path) -> tuple[Path, Path]:
    return demo_model_dirs["sentiment"] / "0", demo_tokenizer


def test_package_builds_an_archive_the_handler_serves(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    saved_model, tokenizer = inputs
    output = tmp_path / "out" / "mood-v2.tar.gz"
    result = runner.invoke(
        app,
        [
            "package",
            "--saved-model",
            str(saved_model),
            "--tokenizer",
            str(tokenizer),
            "--labels",
            "sad,happy",
            "-o",
            str(output),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "valid" in result.output
    with tarfile.open(output) as tar:
        names = tar.getnames()
    assert "0/saved_model.pb" in names
    assert "tokenizer.json" in names
    assert "mme.json" in names
    prediction = validate_model_dir(extract_archive(output, tmp_path / "extracted"))
    assert set(prediction.scores) == {"sad", "happy"}


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"--saved-model": "tokenizer"}, "has no saved_model.pb"),
        ({"--labels": "a,b,c"}, "lists 3 labels but the model outputs 2"),
        ({"--labels": "a,a"}, "duplicates"),
        ({"--labels": "a,"}, "non-empty names"),
        ({"-o": "model.zip"}, "must be named <model>.tar.gz"),
        ({"--tokenizer": "empty"}, "is not a folder written by a tokenizer's save_pretrained"),
    ],
)
def test_bad_input_is_a_cli_error_that_says_what_to_fix(
    inputs: tuple[Path, Path], tmp_path: Path, change: dict[str, str], fragment: str
) -> None:
    saved_model, tokenizer = inputs
    (tmp_path / "empty").mkdir()
    named = {"tokenizer": str(tokenizer), "empty": str(tmp_path / "empty")}
    options = {"--saved-model": str(saved_model), "--tokenizer": str(tokenizer), "-o": str(tmp_path / "m.tar.gz")}
    for key, value in change.items():
        options[key] = named.get(value, str(tmp_path / value) if key == "-o" else value)
    result = runner.invoke(app, ["package", *[part for pair in options.items() for part in pair]])
    assert result.exit_code == 2
    assert fragment in result.output
    assert not (tmp_path / "m.tar.gz").exists()


def test_existing_archive_is_never_overwritten_by_default(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    saved_model, tokenizer = inputs
    output = tmp_path / "m.tar.gz"
    output.write_bytes(b"the released version")
    args = ["package", "--saved-model", str(saved_model), "--tokenizer", str(tokenizer), "-o", str(output)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "new model version gets a new name" in result.output
    assert output.read_bytes() == b"the released version"
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
    assert tarfile.is_tarfile(output)
