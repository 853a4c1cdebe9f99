"""The demo models: really trained, honestly evaluated, and loadable exactly the way the handler loads them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from transformers import AutoTokenizer

from handler.model import MANIFEST_FILE
from mme.demo_models import DEMO_MODELS, MAX_SEQUENCE_LENGTH, TrainedModel, train_demo_model

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")

FRESH_SENTENCES = {
    "sentiment": [
        ("this was wonderful, I loved it", "positive"),
        ("terrible, I hated every minute", "negative"),
        ("An excellent film with a brilliant cast, we enjoyed it.", "positive"),
        ("What a boring and disappointing evening.", "negative"),
    ],
    "topic": [
        ("The striker scored a late goal and the team won the match.", "sports"),
        ("Mix the flour, sugar and butter, then bake the cake in the oven.", "food"),
        ("My laptop got a software update and a faster processor.", "tech"),
        ("We booked a flight and a hotel near the beach for our vacation.", "travel"),
    ],
}


@pytest.fixture(scope="module")
def trained(trained_demo_models: dict[str, TrainedModel]) -> dict[str, TrainedModel]:
    return trained_demo_models


def _logits(model_dir: Path, texts: list[str], *, pad_to: int | None = None) -> np.ndarray:
    """Tokenize and predict the way serving does: the archive's own tokenizer, the ``serving_default`` signature."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    serve = tf.saved_model.load(str(model_dir / "0")).signatures["serving_default"]
    encoded = tokenizer(
        texts,
        padding="max_length" if pad_to else True,
        max_length=pad_to,
        truncation=True,
        return_tensors="np",
    )
    outputs = serve(**{name: tf.constant(encoded[name], dtype=tf.int32) for name in INPUT_NAMES})
    assert set(outputs) == {"logits"}
    return outputs["logits"].numpy()


def _labels(model_dir: Path) -> list[str]:
    return json.loads((model_dir / MANIFEST_FILE).read_text(encoding="utf-8"))["labels"]


@pytest.mark.parametrize("name", [spec.name for spec in DEMO_MODELS])
def test_held_out_accuracy_is_at_least_0_9(trained: dict[str, TrainedModel], name: str) -> None:
    assert trained[name].held_out_accuracy >= 0.9


@pytest.mark.parametrize("spec", DEMO_MODELS, ids=lambda spec: spec.name)
def test_model_dir_has_the_archive_layout(trained: dict[str, TrainedModel], spec) -> None:
    model_dir = trained[spec.name].model_dir
    assert model_dir.name == spec.name
    assert (model_dir / "0" / "saved_model.pb").is_file()
    assert (model_dir / "tokenizer.json").is_file()
    assert (model_dir / "tokenizer_config.json").is_file()
    manifest = json.loads((model_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    assert manifest == {"labels": list(spec.labels), "max_sequence_length": MAX_SEQUENCE_LENGTH}


@pytest.mark.parametrize("name", [spec.name for spec in DEMO_MODELS])
def test_serving_signature_takes_int32_ids_and_returns_logits(trained: dict[str, TrainedModel], name: str) -> None:
    serve = tf.saved_model.load(str(trained[name].model_dir / "0")).signatures["serving_default"]
    _, inputs = serve.structured_input_signature
    assert set(inputs) == set(INPUT_NAMES)
    for spec in inputs.values():
        assert spec.dtype == tf.int32
        assert spec.shape.as_list() == [None, None]
    outputs = serve.structured_outputs
    assert set(outputs) == {"logits"}
    assert outputs["logits"].dtype == tf.float32


@pytest.mark.parametrize("name", sorted(FRESH_SENTENCES))
def test_fresh_sentences_get_the_obvious_label(trained: dict[str, TrainedModel], name: str) -> None:
    model_dir = trained[name].model_dir
    texts, expected = zip(*FRESH_SENTENCES[name], strict=True)
    logits = _logits(model_dir, list(texts))
    labels = _labels(model_dir)
    assert logits.shape == (len(texts), len(labels))
    predicted = [labels[i] for i in logits.argmax(axis=-1)]
    assert dict(zip(texts, predicted, strict=True)) == dict(zip(texts, expected, strict=True))


@pytest.mark.parametrize("name", sorted(FRESH_SENTENCES))
def test_padding_leaves_the_logits_unchanged(trained: dict[str, TrainedModel], name: str) -> None:
    model_dir = trained[name].model_dir
    text = FRESH_SENTENCES[name][0][0]
    alone = _logits(model_dir, [text])
    # A longer neighbour and max-length padding both add [PAD] positions after the text's own tokens.
    in_a_batch = _logits(model_dir, [text, " ".join([FRESH_SENTENCES[name][1][0]] * 3)])
    fully_padded = _logits(model_dir, [text], pad_to=MAX_SEQUENCE_LENGTH)
    np.testing.assert_allclose(in_a_batch[0], alone[0], atol=1e-4)
    np.testing.assert_allclose(fully_padded[0], alone[0], atol=1e-4)


def test_non_empty_model_dir_is_refused(tmp_path: Path) -> None:
    stale = tmp_path / DEMO_MODELS[0].name / "1"
    stale.mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not empty"):
        train_demo_model(DEMO_MODELS[0], tmp_path)
