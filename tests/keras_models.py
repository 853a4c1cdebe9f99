"""Models as users already have them: small BERT-style classifiers built with tf_keras and saved with
``model.save(dir/0)``, each taking one of the paths the handler must serve (issue: serve the models users have).

Every model pools its token embeddings under the attention mask, so its output does not depend on how much padding
a batch carries: the handler pads a dynamic signature to the longest text, the original handlers padded to a fixed
length, and both must give the model's own answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VOCAB_SIZE = 400  # above the demo tokenizer's 360 ids


@dataclass(frozen=True)
class KerasCase:
    """One model: how it was built, and how its original hand-made handler tokenized for it."""

    name: str
    #: Signature input -> tokenizer output, as the original handler fed it.
    feeds: dict[str, str]
    dtype: str = "int32"
    #: Fixed sequence length of the signature, or None for a dynamic one.
    static_length: int | None = None
    classes: int = 2
    #: "softmax", "sigmoid" or None (logits).
    activation: str | None = "softmax"
    output_layer: str = "dense_out"
    #: What `mme package` needs beyond the defaults (flags), for the cases whose names the handler cannot know.
    package_flags: tuple[str, ...] = field(default_factory=tuple)


CASES = {
    case.name: case
    for case in (
        # The original setup: input_ids + input_mask, static [None, 64], softmax at the end.
        KerasCase("static64", {"input_ids": "input_ids", "input_mask": "attention_mask"}, static_length=64),
        KerasCase("softmax", {"input_ids": "input_ids", "attention_mask": "attention_mask"}, classes=3),
        KerasCase("logits", {"input_ids": "input_ids", "attention_mask": "attention_mask"}, classes=3, activation=None),
        KerasCase(
            "sigmoid",
            {"input_ids": "input_ids", "attention_mask": "attention_mask"},
            classes=1,
            activation="sigmoid",
        ),
        KerasCase("int64", {"input_ids": "input_ids", "attention_mask": "attention_mask"}, dtype="int64", classes=4),
        KerasCase(
            "tfhub",
            {"input_word_ids": "input_ids", "input_mask": "attention_mask", "input_type_ids": "token_type_ids"},
            activation=None,
        ),
        KerasCase(
            "custom_names",
            {"tokens": "input_ids", "valid": "attention_mask"},
            package_flags=("--input", "tokens=input_ids", "--input", "valid=attention_mask"),
        ),
    )
}


def build_keras_model(case: KerasCase, seed: int = 7) -> Any:
    """The functional tf_keras model of ``case``, with seeded random weights spread wide enough that its scores are
    far from uniform."""
    import tensorflow as tf
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    shape = (case.static_length,)
    inputs = {name: keras.Input(shape=shape, dtype=case.dtype, name=name) for name in case.feeds}
    by_output = {output: inputs[name] for name, output in case.feeds.items()}

    def wide() -> Any:
        return keras.initializers.RandomNormal(stddev=2.0)

    tokens = keras.layers.Embedding(VOCAB_SIZE, 16, embeddings_initializer=wide())(by_output["input_ids"])
    if "token_type_ids" in by_output:
        types = keras.layers.Embedding(2, 16, embeddings_initializer=wide())(by_output["token_type_ids"])
        tokens = keras.layers.Add()([tokens, types])
    pooled = _masked_mean_layer(keras, tf)()([tokens, by_output["attention_mask"]])
    hidden = keras.layers.Dense(16, activation="tanh", kernel_initializer=wide())(pooled)
    output = keras.layers.Dense(
        case.classes, activation=case.activation, kernel_initializer=wide(), name=case.output_layer
    )(hidden)
    return keras.Model(inputs=list(inputs.values()), outputs=output)


def _masked_mean_layer(keras: Any, tf: Any) -> type:
    class MaskedMean(keras.layers.Layer):
        """The mean of the token vectors where the attention mask is 1."""

        def call(self, inputs: list[Any]) -> Any:
            tokens, mask = inputs
            weights = tf.cast(mask, tf.float32)[..., tf.newaxis]
            return tf.reduce_sum(tokens * weights, 1) / tf.reduce_sum(weights, 1)

    return MaskedMean


def save_keras_model(case: KerasCase, root: Path) -> Path:
    """``model.save(root/0)``, as the original setup did; returns ``root``."""
    build_keras_model(case).save(str(root / "0"))
    return root


def original_outputs(
    case: KerasCase, saved_model_root: Path, tokenizer_dir: Path, texts: list[str], *, max_length: int
) -> list[list[float]]:
    """What the original hand-made handler answered: ``tf.keras.models.load_model(dir/0)`` fed the tokenizer's
    output, truncated to ``max_length`` and padded to the signature's length (or the longest text), without token
    type ids unless the model takes them."""
    import numpy as np
    import tf_keras as keras
    from transformers import AutoTokenizer

    model = keras.models.load_model(str(saved_model_root / "0"))
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    encoded = tokenizer(
        texts,
        max_length=max_length,
        padding="max_length" if case.static_length else True,
        truncation=True,
        return_token_type_ids="token_type_ids" in case.feeds.values(),
        return_tensors="np",
    )
    feeds = {name: encoded[output].astype(case.dtype) for name, output in case.feeds.items()}
    return np.asarray(model.predict(feeds, verbose=0), dtype=float).tolist()
