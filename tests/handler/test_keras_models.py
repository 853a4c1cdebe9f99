"""Models as users already have them (tf_keras ``model.save``), packaged by ``mme package`` with no more flags than
their case needs, answer exactly what the model itself answers, in process."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
from keras_models import CASES, original_outputs

from handler.manifest import OutputKind
from handler.model import load_model_dir
from handler.settings import ServingSettings
from mme.archive import extract_archive

SHORT = "a fine film"
LONG = "the striker scored twice in the final match and the crowd sang " * 20  # far over 128 tokens
TEXTS = [SHORT, LONG, "the new laptop ships with a faster processor"]


@pytest.fixture(scope="module")
def extracted(keras_archives: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keras-extracted")
    return {name: extract_archive(archive, root / name) for name, archive in keras_archives.items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_served_outputs_equal_the_models_own(
    name: str, extracted: dict[str, Path], keras_models: dict[str, Path], demo_tokenizer: Path
) -> None:
    case = CASES[name]
    classifier = load_model_dir(extracted[name], ServingSettings())
    assert classifier.plan.static_length == (case.static_length is not None)
    expected = original_outputs(
        case, keras_models[name], demo_tokenizer, TEXTS, max_length=classifier.plan.max_sequence_length
    )
    together = classifier.predict(TEXTS)
    alone = [classifier.predict([text])[0] for text in TEXTS]
    for served, own in zip([*together, *alone], [*expected, *expected], strict=True):
        assert served.output == pytest.approx(own, abs=1e-5)
    kind = OutputKind.PROBABILITIES if case.activation else OutputKind.LOGITS
    assert classifier.plan.output_kind is kind
    assert {prediction.output_kind for prediction in together} == {str(kind)}


def test_static_length_pads_short_and_truncates_long_texts_to_64(extracted: dict[str, Path]) -> None:
    classifier = load_model_dir(extracted["static64"], ServingSettings())
    assert (classifier.plan.max_sequence_length, classifier.plan.static_length) == (64, True)
    # TensorFlow refuses any other length for a [None, 64] signature, so an answer proves the padding/truncation.
    assert len(classifier.predict([SHORT, LONG, SHORT * 3])) == 3


def test_softmax_model_scores_are_its_own_probabilities(
    extracted: dict[str, Path], keras_models: dict[str, Path], demo_tokenizer: Path
) -> None:
    classifier = load_model_dir(extracted["softmax"], ServingSettings())
    (own,) = original_outputs(CASES["softmax"], keras_models["softmax"], demo_tokenizer, [SHORT], max_length=64)
    (prediction,) = classifier.predict([SHORT])
    assert list(prediction.scores.values()) == pytest.approx(own, abs=1e-6)
    twice = [math.exp(p) / sum(math.exp(q) for q in own) for p in own]
    assert max(abs(a - b) for a, b in zip(twice, own, strict=True)) > 0.05, "a second softmax must show here"


def test_sigmoid_column_is_a_binary_classifier_whose_positive_score_is_the_models_output(
    extracted: dict[str, Path], keras_models: dict[str, Path], demo_tokenizer: Path
) -> None:
    classifier = load_model_dir(extracted["sigmoid"], ServingSettings())
    assert classifier.labels == ("LABEL_0", "LABEL_1")
    (own,) = original_outputs(CASES["sigmoid"], keras_models["sigmoid"], demo_tokenizer, [SHORT], max_length=64)
    (prediction,) = classifier.predict([SHORT])
    assert prediction.scores["LABEL_1"] == pytest.approx(own[0], abs=1e-6)
    assert prediction.scores["LABEL_0"] == pytest.approx(1 - own[0], abs=1e-6)
    assert prediction.label == ("LABEL_1" if own[0] > 0.5 else "LABEL_0")


def test_zero_only_model_is_served_with_the_default_tokenizer(
    keras_models: dict[str, Path], demo_tokenizer: Path, tmp_path: Path
) -> None:
    original = tmp_path / "original"
    shutil.copytree(keras_models["static64"], original)
    assert sorted(child.name for child in original.iterdir()) == ["0"]
    classifier = load_model_dir(original, ServingSettings(default_tokenizer_dir=demo_tokenizer))
    expected = original_outputs(CASES["static64"], original, demo_tokenizer, [SHORT, LONG], max_length=64)
    assert [p.output for p in classifier.predict([SHORT, LONG])] == [pytest.approx(row, abs=1e-5) for row in expected]
