"""`mme package`: building a model archive from a SavedModel and a tokenizer, validated by the handler."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from handler.model import load_model_dir
from handler.settings import ServingSettings
from mme.archive import extract_archive, write_archive
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
    classifier = load_model_dir(extract_archive(output, tmp_path / "extracted"), ServingSettings())
    assert classifier.labels == ("sad", "happy")


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (
            {"--saved-model": "tokenizer"},
            "holds no SavedModel: give the folder model.save or tf.saved_model.save wrote",
        ),
        ({"--labels": "a,b,c"}, "lists 3 labels but the model outputs 2"),
        ({"--labels": "a,a"}, "duplicates"),
        ({"--labels": "a,"}, "'labels' must be a non-empty list of non-empty strings"),
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


# --- models as users already have them (tf_keras model.save, 0/ only) ------------------------------------------


def _package(*args: str) -> Result:
    return runner.invoke(app, ["package", *args])


def _package_keras(model_root: Path, tokenizer: Path, output: Path, *flags: str) -> Result:
    return _package("--saved-model", str(model_root / "0"), "--tokenizer", str(tokenizer), *flags, "-o", str(output))


def _refused(result: Result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    assert fragment in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 8, result.output


def test_original_keras_model_packages_with_no_flags_and_reports_what_it_found(
    keras_models: dict[str, Path], demo_tokenizer: Path, tmp_path: Path
) -> None:
    output = tmp_path / "original-v2.tar.gz"
    result = _package_keras(keras_models["static64"], demo_tokenizer, output)
    assert result.exit_code == 0, result.output
    assert "input_ids (int32 [batch, 64]) <- input_ids (default)" in result.output
    assert "input_mask (int32 [batch, 64]) <- attention_mask (default)" in result.output
    assert "64 tokens per text, fixed by the signature" in result.output
    assert "dense_out (float32 [batch, 2]): probabilities (softmax in the graph)" in result.output
    assert "labels:     LABEL_0, LABEL_1" in result.output
    assert re.search(r"test: .* -> LABEL_[01] \(LABEL_0 [01]\.\d{4}, LABEL_1 [01]\.\d{4}\)", result.output)
    assert tarfile.is_tarfile(output)


def test_input_names_nobody_can_guess_are_refused_with_the_line_to_add(
    keras_models: dict[str, Path], demo_tokenizer: Path, tmp_path: Path
) -> None:
    output = tmp_path / "custom.tar.gz"
    result = _package_keras(keras_models["custom_names"], demo_tokenizer, output)
    _refused(result, '"inputs": {"tokens": "input_ids", "valid": "attention_mask"}')
    assert "--input tokens=input_ids --input valid=attention_mask" in result.output
    assert not output.exists()


def test_flags_merge_over_the_sources_own_mme_json(
    keras_models: dict[str, Path], demo_tokenizer: Path, tmp_path: Path
) -> None:
    first = tmp_path / "m.tar.gz"
    args = ["--tokenizer", str(demo_tokenizer), "--labels", "neg,pos", "--response-format", "raw"]
    assert (
        _package(
            "--saved-model", str(keras_models["logits"] / "0"), *args, "--labels", "a,b,c", "-o", str(first)
        ).exit_code
        == 0
    )
    second = tmp_path / "m-v2.tar.gz"
    result = _package("--from", str(first), "--max-sequence-length", "32", "-o", str(second))
    assert result.exit_code == 0, result.output
    with tarfile.open(second) as tar:
        manifest = json.load(tar.extractfile("mme.json"))
    assert manifest == {"labels": ["a", "b", "c"], "max_sequence_length": 32, "response_format": "raw"}
    assert "at most 32 tokens per text" in result.output
    assert "the bare output row" in result.output


def test_zero_only_archive_is_repackaged_from_the_archive_itself_under_a_new_key(
    keras_models: dict[str, Path], demo_tokenizer: Path, tmp_path: Path
) -> None:
    old = write_archive(keras_models["static64"], tmp_path / "intent.tar.gz")
    released = old.read_bytes()
    _refused(
        _package("--from", str(old), "-o", str(old), "--tokenizer", str(demo_tokenizer), "--overwrite"),
        "a repackaged model gets a new key",
    )
    _refused(_package("--from", str(old), "-o", str(tmp_path / "x.tar.gz")), "has no tokenizer: pass --tokenizer DIR")
    new = tmp_path / "intent-v2.tar.gz"
    result = _package("--from", str(old), "--tokenizer", str(demo_tokenizer), "--labels", "book,cancel", "-o", str(new))
    assert result.exit_code == 0, result.output
    assert old.read_bytes() == released
    with tarfile.open(new) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("mme.json"))
    assert {"0/saved_model.pb", "tokenizer.json", "vocab.txt", "mme.json"} <= names
    assert manifest == {"labels": ["book", "cancel"]}


def test_no_tokenizer_archive_relies_on_the_default_and_is_tested_with_it(
    keras_models: dict[str, Path], demo_tokenizer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MME_DEFAULT_TOKENIZER_DIR", raising=False)
    saved_model = str(keras_models["static64"] / "0")
    output = tmp_path / "zero.tar.gz"
    _refused(_package("--saved-model", saved_model, "--no-tokenizer", "-o", str(output)), "--default-tokenizer DIR")
    _refused(
        _package("--saved-model", saved_model, "--no-tokenizer", "--tokenizer", str(demo_tokenizer), "-o", str(output)),
        "--tokenizer and --no-tokenizer contradict each other",
    )
    assert not output.exists()
    monkeypatch.setenv("MME_DEFAULT_TOKENIZER_DIR", str(demo_tokenizer))
    result = _package("--saved-model", saved_model, "--no-tokenizer", "-o", str(output))
    assert result.exit_code == 0, result.output
    assert "served with the container's default tokenizer" in result.output
    with tarfile.open(output) as tar:
        assert {name.split("/")[0] for name in tar.getnames()} == {"0"}


@pytest.mark.parametrize(
    ("case", "flags", "fragment"),
    [
        (
            "static64",
            ["--max-sequence-length", "128"],
            "fixes 64 tokens per text: remove max_sequence_length or set it to 64",
        ),
        ("custom_names", ["--input", "tokens"], "must look like SIGNATURE_INPUT=TOKENIZER_OUTPUT"),
        ("custom_names", ["--input", "tokens=word_ids"], "a tokenizer output is one of input_ids, attention_mask"),
        (
            "custom_names",
            ["--input", "pixels=input_ids"],
            "binds ['pixels'], which the 'serving_default' signature does",
        ),
        (
            "logits",
            ["--output-name", "probs"],
            "names output_name 'probs', but the 'serving_default' signature outputs",
        ),
        ("logits", ["--output-kind", "odds"], "'odds' is not one of"),
        ("sigmoid", ["--labels", "a,b,c"], "lists 3 labels but the model outputs one probability or logit"),
    ],
)
def test_bad_flags_are_refused_in_a_few_lines(
    keras_models: dict[str, Path], demo_tokenizer: Path, tmp_path: Path, case: str, flags: list[str], fragment: str
) -> None:
    output = tmp_path / "m.tar.gz"
    result = _package_keras(keras_models[case], demo_tokenizer, output, *flags)
    _refused(result, fragment)
    assert not output.exists()


def test_saved_model_and_from_are_one_or_the_other(keras_models: dict[str, Path], tmp_path: Path) -> None:
    source = str(keras_models["static64"] / "0")
    _refused(_package("--saved-model", source, "--from", source, "-o", str(tmp_path / "m.tar.gz")), "exactly one of")
    _refused(_package("-o", str(tmp_path / "m.tar.gz")), "exactly one of")


# --- mme inspect ---------------------------------------------------------------------------------------------


def test_inspect_reports_an_archive_and_writes_nothing(keras_archives: dict[str, Path]) -> None:
    folder = keras_archives["tfhub"].parent
    before = sorted(folder.rglob("*"))
    result = runner.invoke(app, ["inspect", str(keras_archives["tfhub"])])
    assert result.exit_code == 0, result.output
    assert "input_word_ids (int32 [batch, ?]) <- input_ids (default)" in result.output
    assert "input_type_ids (int32 [batch, ?]) <- token_type_ids (default)" in result.output
    assert "dense_out (float32 [batch, 2]): logits (default)" in result.output
    assert "shipped in the archive" in result.output
    assert "test: " in result.output
    assert sorted(folder.rglob("*")) == before


def test_inspect_a_zero_only_saved_model_with_and_without_the_default_tokenizer(
    keras_models: dict[str, Path], demo_tokenizer: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MME_DEFAULT_TOKENIZER_DIR", raising=False)
    result = runner.invoke(app, ["inspect", str(keras_models["sigmoid"])])
    assert result.exit_code == 0, result.output
    assert "probabilities (sigmoid in the graph) (one column: a binary classifier)" in result.output
    assert "no test prediction: the archive ships no tokenizer" in result.output
    result = runner.invoke(
        app, ["inspect", str(keras_models["int64"] / "0"), "--default-tokenizer", str(demo_tokenizer)]
    )
    assert result.exit_code == 0, result.output
    assert "input_ids (int64 [batch, ?]) <- input_ids (default)" in result.output
    assert re.search(r"test: .* -> LABEL_\d", result.output)


def test_inspect_refuses_what_is_not_a_model(tmp_path: Path) -> None:
    _refused(runner.invoke(app, ["inspect", str(tmp_path / "nothing")]), "does not exist")
    (tmp_path / "notes.txt").write_text("hello")
    _refused(runner.invoke(app, ["inspect", str(tmp_path / "notes.txt")]), "is a file but not a <model>.tar.gz archive")
    _refused(runner.invoke(app, ["inspect", str(tmp_path)]), "holds no SavedModel")
