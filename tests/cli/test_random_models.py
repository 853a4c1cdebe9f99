"""Random-weight classifiers of a given shape, built in code for benchmarks: served like any model, of the size
asked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from handler.model import load_model_dir
from handler.settings import ServingSettings
from mme.demo_models import BERT_BASE, EncoderShape, parameter_count, write_random_model

SMALL = EncoderShape(hidden=48, heads=4, layers=3, intermediate=96)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_model(
        tmp_path_factory.mktemp("random"), name="small", shape=SMALL, vocab_size=700, labels=("a", "b", "c")
    )


def test_it_holds_exactly_the_weights_of_its_shape(small_model: Path) -> None:
    saved = tf.train.list_variables(str(small_model / "0" / "variables" / "variables"))
    weights = sum(int(np.prod(shape)) for name, shape in saved if name.endswith("/.ATTRIBUTES/VARIABLE_VALUE"))
    assert weights == parameter_count(SMALL, vocab_size=700, num_labels=3)
    assert len((small_model / "vocab.txt").read_text().split()) == 700


def test_it_is_served_like_any_model(small_model: Path) -> None:
    classifier = load_model_dir(small_model, ServingSettings())
    texts = ["the striker scored twice in the final match", "a cheap flight and a hotel by the beach " * 20]
    predictions = classifier.predict(texts)
    assert len(predictions) == 2
    for prediction in predictions:
        assert prediction.label in ("a", "b", "c")
        assert sum(prediction.scores.values()) == pytest.approx(1.0, abs=1e-5)


def test_bert_base_shape_is_the_size_of_bert_base() -> None:
    # BertModel (bert-base-uncased) has 109,482,240 weights with its 512-position table; ours has 64 positions and a
    # 2-label head on top.
    count = parameter_count(BERT_BASE, vocab_size=30522, num_labels=2)
    assert count == 109_482_240 - (512 - 64) * 768 + (768 * 2 + 2)
