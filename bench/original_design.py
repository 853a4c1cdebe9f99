"""The hand-made handler this project replaces, reproduced for issue 11's last throughput figure.

What it did (README, "Migrating from a hand-made multi-model endpoint"): a ``tf.keras`` BERT classifier saved with
``model.save(dir/0)`` (inputs ``input_ids`` and ``input_mask``, static shape ``[None, 64]``, softmax at the end),
loaded with ``tf.keras.models.load_model``, and per request the tokenizer's output padded to 64 tokens and one
``model.predict([...])[0]`` call. Here the encoder has bert-base's shape with random weights, built in code.

The benchmark gives this design every benefit it did not have: it runs in the benchmark's own process (no MMS, no
HTTP), and its concurrent requests call ``predict`` from eight threads at once (the original served one request at a
time per MMS worker). So its throughput is an upper bound on what the original served.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mme.demo_models import BERT_BASE, EncoderShape

#: The original's fixed input length.
ORIGINAL_LENGTH = 64
#: bert-base's position table (the original models were fine-tuned bert-base-cased).
POSITIONS = 512


def build_original_model(vocab_size: int, labels: int, shape: EncoderShape = BERT_BASE, seed: int = 0) -> Any:
    """A functional tf_keras BERT classifier of ``shape``, with the original's inputs and softmax head."""
    import tensorflow as tf
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    input_ids = keras.Input(shape=(ORIGINAL_LENGTH,), dtype="int32", name="input_ids")
    input_mask = keras.Input(shape=(ORIGINAL_LENGTH,), dtype="int32", name="input_mask")
    # tf ops on inputs become built-in TFOpLambda layers, so load_model needs no custom object.
    position_ids = tf.zeros_like(input_ids) + tf.range(ORIGINAL_LENGTH, dtype=tf.int32)
    hidden = keras.layers.Add()(
        [
            keras.layers.Embedding(vocab_size, shape.hidden)(input_ids),
            keras.layers.Embedding(POSITIONS, shape.hidden)(position_ids),
        ]
    )
    hidden = keras.layers.LayerNormalization(epsilon=1e-12)(hidden)
    # [batch, 1, 64]: every query attends to the real tokens only.
    attention_mask = keras.layers.Reshape((1, ORIGINAL_LENGTH))(input_mask)
    for _ in range(shape.layers):
        attended = keras.layers.MultiHeadAttention(shape.heads, shape.hidden // shape.heads)(
            hidden, hidden, attention_mask=attention_mask
        )
        hidden = keras.layers.LayerNormalization(epsilon=1e-12)(keras.layers.Add()([hidden, attended]))
        widened = keras.layers.Dense(shape.intermediate, activation="gelu")(hidden)
        narrowed = keras.layers.Dense(shape.hidden)(widened)
        hidden = keras.layers.LayerNormalization(epsilon=1e-12)(keras.layers.Add()([hidden, narrowed]))
    first_token = keras.layers.Cropping1D((0, ORIGINAL_LENGTH - 1))(hidden)
    pooled = keras.layers.Dense(shape.hidden, activation="tanh")(keras.layers.Flatten()(first_token))
    output = keras.layers.Dense(labels, activation="softmax")(pooled)
    return keras.Model(inputs=[input_ids, input_mask], outputs=output)


def write_original_model(root: Path, vocab_size: int, labels: int, shape: EncoderShape = BERT_BASE) -> Path:
    """``model.save(root/0)`` of :func:`build_original_model`, as the original setup saved; returns ``root/0``."""
    saved = root / "0"
    build_original_model(vocab_size, labels, shape).save(str(saved))
    return saved


def original_predictor(saved_model_dir: Path, tokenizer_dir: Path) -> Callable[[str], list[float]]:
    """The original handler's per-request path: ``load_model`` once, then per text the tokenizer padded to 64 and
    one ``model.predict([input_ids, input_mask])[0]``."""
    import numpy as np
    import tf_keras as keras
    from transformers import AutoTokenizer

    model = keras.models.load_model(str(saved_model_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))

    def predict(text: str) -> list[float]:
        encoded = tokenizer(
            [text], max_length=ORIGINAL_LENGTH, padding="max_length", truncation=True, return_tensors="np"
        )
        feeds = [encoded["input_ids"].astype(np.int32), encoded["attention_mask"].astype(np.int32)]
        return model.predict(feeds, verbose=0)[0].tolist()

    # tf_keras builds its predict function on the first call, and two threads building it at once fail: the original
    # handler's first request did this alone too.
    predict("warm up")
    return predict
