"""Tiny BERT-style demo classifiers, trained from scratch on generated text, in the archive layout we serve.

Nothing is downloaded: the text comes from templates and word lists, the WordPiece vocabulary is learnt from that
text, and the encoder is about 100k TensorFlow weights trained on the CPU in seconds. The result is a folder
``model_dir`` that becomes the content of ``<name>.tar.gz``:

- ``model_dir/0/``: a TensorFlow SavedModel whose ``serving_default`` signature takes ``input_ids``,
  ``attention_mask`` and ``token_type_ids`` (int32, ``[batch, sequence]``) and returns ``{"logits": float32
  [batch, num_labels]}``;
- ``model_dir/``: the tokenizer, written with ``save_pretrained``;
- ``model_dir/mme.json`` (``handler.model.MANIFEST_FILE``): ``{"labels": [...], "max_sequence_length": 64}``,
  labels in logit order.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import random
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np
import tensorflow as tf
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertTokenizerFast

from handler.model import MANIFEST_FILE

logger = logging.getLogger(__name__)

MAX_SEQUENCE_LENGTH = 64
"""Longest input (in tokens, [CLS] and [SEP] included) the exported signature accepts; written to the manifest."""

MIN_HELD_OUT_ACCURACY = 0.9
"""``train_demo_model`` refuses to hand back a model that scores below this on its held-out split."""

_SLOT = re.compile(r"\{(\w+)\}")
_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclass(frozen=True)
class DemoModelSpec:
    """What a demo model predicts and the text generator it learns from.

    A generated sentence is one of ``templates`` with every ``{slot}`` occurrence filled independently: slots named in
    ``label_words[label]`` are filled from that label's words (the signal), any other slot from ``neutral_words``
    (noise shared by all labels). Every template is used with every label, so the templates themselves carry no
    label information and held-out templates measure generalisation honestly.

    Raises:
        ValueError: from construction, if labels are duplicated, a label has no words, a template uses a slot that
            neither the label nor ``neutral_words`` fills, or there are fewer than four templates (too few to split).
    """

    name: str
    labels: tuple[str, ...]
    templates: tuple[str, ...]
    label_words: Mapping[str, Mapping[str, tuple[str, ...]]]
    neutral_words: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if len(set(self.labels)) != len(self.labels) or len(self.labels) < 2:
            raise ValueError(f"{self.name}: labels must be at least two distinct names, got {self.labels}")
        if set(self.label_words) != set(self.labels):
            raise ValueError(f"{self.name}: label_words keys {sorted(self.label_words)} != labels {self.labels}")
        if len(self.templates) < 4:
            raise ValueError(f"{self.name}: need at least 4 templates to hold some out, got {len(self.templates)}")
        for label, template in itertools.product(self.labels, self.templates):
            for slot in _SLOT.findall(template):
                words = self.label_words[label].get(slot) or self.neutral_words.get(slot)
                if not words:
                    raise ValueError(f"{self.name}: slot {{{slot}}} of {template!r} has no words for label {label}")


@dataclass(frozen=True)
class TrainedModel:
    """A trained demo model on disk: ``model_dir`` holds exactly the archive content described in the module doc."""

    name: str
    model_dir: Path
    held_out_accuracy: float


def _frozen(words: Mapping[str, Sequence[str]]) -> Mapping[str, tuple[str, ...]]:
    return MappingProxyType({slot: tuple(values) for slot, values in words.items()})


_SENTIMENT = DemoModelSpec(
    name="sentiment",
    labels=("negative", "positive"),
    templates=(
        "the {thing} was {adj}.",
        "{adj}, i {verb} every minute of the {thing}.",
        "i {verb} the {thing}, it was {adj}.",
        "what a {adj} {thing}!",
        "honestly, the {thing} felt {adj} from start to finish.",
        "we {verb} this {thing}.",
        "my friends and i {verb} the {thing}, truly {adj}.",
        "this {thing} is {adj} and i {verb} it.",
        "overall the {thing} was {adj} and the ending was {adj}.",
        "i have to say i {verb} it.",
        "the second half of the {thing} was {adj}.",
        "it was {adj}, simply {adj}.",
        "everyone said the {thing} would be {adj}, and it was.",
        "we went to the {thing} last night and {verb} it.",
    ),
    label_words=MappingProxyType(
        {
            "negative": _frozen(
                {
                    "adj": (
                        "terrible",
                        "awful",
                        "horrible",
                        "dreadful",
                        "boring",
                        "disappointing",
                        "bad",
                        "poor",
                        "miserable",
                        "annoying",
                        "dull",
                        "painful",
                        "mediocre",
                        "ugly",
                        "unbearable",
                        "tedious",
                    ),
                    "verb": ("hated", "disliked", "regretted", "despised", "loathed", "resented"),
                }
            ),
            "positive": _frozen(
                {
                    "adj": (
                        "wonderful",
                        "great",
                        "excellent",
                        "amazing",
                        "fantastic",
                        "delightful",
                        "brilliant",
                        "superb",
                        "lovely",
                        "enjoyable",
                        "perfect",
                        "charming",
                        "beautiful",
                        "fun",
                        "marvelous",
                        "good",
                    ),
                    "verb": ("loved", "enjoyed", "adored", "liked", "appreciated", "treasured"),
                }
            ),
        }
    ),
    neutral_words=_frozen(
        {
            "thing": (
                "movie",
                "film",
                "show",
                "book",
                "meal",
                "concert",
                "trip",
                "game",
                "album",
                "play",
                "hotel",
                "restaurant",
                "lecture",
                "series",
                "performance",
                "evening",
                "course",
                "party",
                "visit",
                "story",
            ),
        }
    ),
)

_TOPIC = DemoModelSpec(
    name="topic",
    labels=("sports", "tech", "food", "travel"),
    templates=(
        "i read an article about the {noun} and the {noun}.",
        "yesterday we talked for hours about the {noun} and the {noun}.",
        "the {noun} was the best part of the whole {noun}.",
        "my friend {verb} the {noun} last weekend.",
        "everyone {verb} the {noun}, especially the {noun}.",
        "did you hear the news about the {noun} and the {noun}?",
        "we {verb} the {noun} and then looked at the {noun}.",
        "she wrote a long post on the {noun}, the {noun} and the {noun}.",
        "honestly the {noun} matters more than the {noun}.",
        "they {verb} the {noun} before the {noun}.",
        "there is a new {noun} near the {noun}.",
        "he keeps asking questions about the {noun} and the {noun}.",
        "this year the {noun} and the {noun} were all anyone {verb}.",
        "after work i {verb} the {noun} with a {noun}.",
    ),
    label_words=MappingProxyType(
        {
            "sports": _frozen(
                {
                    "noun": (
                        "football",
                        "match",
                        "goal",
                        "team",
                        "coach",
                        "player",
                        "stadium",
                        "referee",
                        "league",
                        "tournament",
                        "score",
                        "season",
                        "striker",
                        "championship",
                        "penalty",
                        "goalkeeper",
                        "basketball",
                        "tennis",
                        "race",
                        "fans",
                    ),
                    "verb": ("scored", "won", "defended", "kicked", "coached", "trained for", "cheered"),
                }
            ),
            "tech": _frozen(
                {
                    "noun": (
                        "laptop",
                        "software",
                        "processor",
                        "memory",
                        "smartphone",
                        "app",
                        "server",
                        "keyboard",
                        "update",
                        "chip",
                        "battery",
                        "network",
                        "database",
                        "code",
                        "algorithm",
                        "computer",
                        "website",
                        "browser",
                        "cloud",
                        "robot",
                    ),
                    "verb": ("installed", "upgraded", "debugged", "programmed", "rebooted", "downloaded", "coded"),
                }
            ),
            "food": _frozen(
                {
                    "noun": (
                        "recipe",
                        "flour",
                        "sugar",
                        "oven",
                        "cake",
                        "soup",
                        "garlic",
                        "pasta",
                        "sauce",
                        "kitchen",
                        "chef",
                        "bread",
                        "butter",
                        "dessert",
                        "spices",
                        "salad",
                        "cheese",
                        "tomatoes",
                        "pizza",
                        "chocolate",
                    ),
                    "verb": ("baked", "cooked", "tasted", "seasoned", "stirred", "grilled", "chopped"),
                }
            ),
            "travel": _frozen(
                {
                    "noun": (
                        "flight",
                        "hotel",
                        "beach",
                        "passport",
                        "airport",
                        "luggage",
                        "vacation",
                        "trip",
                        "tourist",
                        "island",
                        "museum",
                        "itinerary",
                        "suitcase",
                        "guidebook",
                        "resort",
                        "cruise",
                        "visa",
                        "hostel",
                        "mountains",
                        "journey",
                    ),
                    "verb": ("booked", "visited", "explored", "toured", "packed", "flew to", "hiked"),
                }
            ),
        }
    ),
)

DEMO_MODELS: tuple[DemoModelSpec, ...] = (_SENTIMENT, _TOPIC)
"""The demo models ``mme`` ships: ``sentiment`` (negative, positive) and ``topic`` (sports, tech, food, travel)."""


@dataclass(frozen=True)
class EncoderShape:
    """The size of a BERT-style encoder: hidden width, attention heads, layers, feed-forward width, segment types.
    The defaults are the demo models' (about 100k weights besides the embeddings)."""

    hidden: int = 64
    heads: int = 4
    layers: int = 2
    intermediate: int = 128
    type_vocab: int = 2


#: bert-base's encoder (Devlin et al. 2018): 12 layers, hidden 768, 12 heads, feed-forward 3072.
BERT_BASE = EncoderShape(hidden=768, heads=12, layers=12, intermediate=3072)
#: bert-base's WordPiece vocabulary size (bert-base-uncased).
BERT_BASE_VOCAB_SIZE = 30522


@dataclass(frozen=True)
class _TrainingConfig:
    train_examples: int = 2000
    held_out_examples: int = 400
    held_out_template_fraction: float = 0.25
    batch_size: int = 32
    steps: int = 400
    learning_rate: float = 2e-3
    warmup_steps: int = 40
    vocab_size: int = 1000
    token_noise: float = 0.15
    unseen_word_rate: float = 0.5


def _fill(template: str, words: Mapping[str, tuple[str, ...]], rng: random.Random) -> str:
    # Each occurrence is drawn on its own, so "{noun} and {noun}" yields two (usually different) nouns.
    return _SLOT.sub(lambda match: rng.choice(words[match.group(1)]), template)


def _generate(
    spec: DemoModelSpec, templates: Sequence[str], count: int, rng: random.Random, exclude: frozenset[str]
) -> tuple[list[str], list[int]]:
    texts: list[str] = []
    label_ids: list[int] = []
    attempts = 0
    while len(texts) < count:
        attempts += 1
        if attempts > 50 * count:
            raise RuntimeError(f"{spec.name}: the templates cannot produce {count} texts outside the exclusions")
        label_id = rng.randrange(len(spec.labels))
        words = {**spec.neutral_words, **spec.label_words[spec.labels[label_id]]}
        text = _fill(rng.choice(templates), words, rng)
        if text in exclude:
            continue
        texts.append(text)
        label_ids.append(label_id)
    return texts, label_ids


def _with_unseen_words(text: str, letters: str, rate: float, rng: random.Random) -> str:
    """Insert 1-3 made-up words into ``text`` with probability ``rate``.

    Real sentences are full of words the tiny vocabulary lacks; they arrive as runs of word pieces. A model that never
    saw such runs in training reads them as a signal (a held-out "my friend ... last weekend" once went to
    "sports"), so training texts carry some. ``letters`` are those of the training text, so the made-up words split
    into the same pieces real unknown words do.
    """
    if rng.random() >= rate:
        return text
    words = text.split(" ")
    for _ in range(rng.randint(1, 3)):
        made_up = "".join(rng.choice(letters) for _ in range(rng.randint(2, 9)))
        words.insert(rng.randint(0, len(words)), made_up)
    return " ".join(words)


def _build_tokenizer(texts: Sequence[str], vocab_size: int) -> BertTokenizerFast:
    # The same pipeline as a stock uncased BERT tokenizer, so nothing about serving needs to know it is homemade.
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, clean_text=True, handle_chinese_chars=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(_SPECIAL_TOKENS), min_frequency=1)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return BertTokenizerFast(
        tokenizer_object=tokenizer,
        do_lower_case=True,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        model_max_length=MAX_SEQUENCE_LENGTH,
    )


class _Dense(tf.Module):
    def __init__(self, inputs: int, outputs: int, init: tf.random.Generator, name: str) -> None:
        super().__init__(name=name)
        limit = math.sqrt(6.0 / (inputs + outputs))
        self.kernel = tf.Variable(init.uniform([inputs, outputs], -limit, limit), name="kernel")
        self.bias = tf.Variable(tf.zeros([outputs]), name="bias")

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        # Not einsum: its gradient for "...i,io->...o" takes tens of milliseconds per layer on CPU (measured).
        return tf.tensordot(x, self.kernel, axes=1) + self.bias


class _LayerNorm(tf.Module):
    def __init__(self, size: int, name: str) -> None:
        super().__init__(name=name)
        self.gamma = tf.Variable(tf.ones([size]), name="gamma")
        self.beta = tf.Variable(tf.zeros([size]), name="beta")

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
        return (x - mean) * tf.math.rsqrt(variance + 1e-6) * self.gamma + self.beta


class _EncoderLayer(tf.Module):
    """Post-LN transformer block, as in BERT."""

    def __init__(self, config: EncoderShape, init: tf.random.Generator, name: str) -> None:
        super().__init__(name=name)
        self.heads = config.heads
        self.query = _Dense(config.hidden, config.hidden, init, "query")
        self.key = _Dense(config.hidden, config.hidden, init, "key")
        self.value = _Dense(config.hidden, config.hidden, init, "value")
        self.attention_output = _Dense(config.hidden, config.hidden, init, "attention_output")
        self.attention_norm = _LayerNorm(config.hidden, "attention_norm")
        self.intermediate = _Dense(config.hidden, config.intermediate, init, "intermediate")
        self.output = _Dense(config.intermediate, config.hidden, init, "output")
        self.output_norm = _LayerNorm(config.hidden, "output_norm")

    def __call__(self, x: tf.Tensor, attention_bias: tf.Tensor) -> tf.Tensor:
        batch, length, hidden = tf.shape(x)[0], tf.shape(x)[1], x.shape[-1]
        head_size = hidden // self.heads

        def split_heads(t: tf.Tensor) -> tf.Tensor:
            return tf.transpose(tf.reshape(t, [batch, length, self.heads, head_size]), [0, 2, 1, 3])

        q, k, v = split_heads(self.query(x)), split_heads(self.key(x)), split_heads(self.value(x))
        scores = tf.matmul(q, k, transpose_b=True) / math.sqrt(head_size) + attention_bias
        context = tf.matmul(tf.nn.softmax(scores, axis=-1), v)
        context = tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [batch, length, hidden])
        x = self.attention_norm(x + self.attention_output(context))
        return self.output_norm(x + self.output(tf.nn.gelu(self.intermediate(x))))


_SERVING_INPUT = tf.TensorSpec([None, None], tf.int32)


class _BertClassifier(tf.Module):
    """Token + position + segment embeddings, a stack of encoder layers, a tanh pooler on [CLS], a linear head.

    Only this module is saved, so the SavedModel holds the weights and ``serve``, not the training machinery.
    """

    def __init__(self, vocab_size: int, num_labels: int, config: EncoderShape, init: tf.random.Generator) -> None:
        super().__init__(name="bert_classifier")
        self.token_embeddings = tf.Variable(init.normal([vocab_size, config.hidden], stddev=0.02), name="tokens")
        self.position_embeddings = tf.Variable(
            init.normal([MAX_SEQUENCE_LENGTH, config.hidden], stddev=0.02), name="positions"
        )
        self.segment_embeddings = tf.Variable(
            init.normal([config.type_vocab, config.hidden], stddev=0.02), name="segments"
        )
        self.embedding_norm = _LayerNorm(config.hidden, "embedding_norm")
        self.encoder = [_EncoderLayer(config, init, f"layer_{i}") for i in range(config.layers)]
        self.pooler = _Dense(config.hidden, config.hidden, init, "pooler")
        self.classifier = _Dense(config.hidden, num_labels, init, "classifier")

    def logits(self, input_ids: tf.Tensor, attention_mask: tf.Tensor, token_type_ids: tf.Tensor) -> tf.Tensor:
        length = tf.shape(input_ids)[1]
        x = (
            tf.gather(self.token_embeddings, input_ids)
            + self.position_embeddings[tf.newaxis, :length]
            + tf.gather(self.segment_embeddings, token_type_ids)
        )
        x = self.embedding_norm(x)
        # Padded keys get -1e9 before the softmax, i.e. exactly zero weight, so padding cannot move any real token.
        attention_bias = (1.0 - tf.cast(attention_mask, tf.float32))[:, tf.newaxis, tf.newaxis, :] * -1e9
        for layer in self.encoder:
            x = layer(x, attention_bias)
        return self.classifier(tf.tanh(self.pooler(x[:, 0])))

    @tf.function(input_signature=[_SERVING_INPUT, _SERVING_INPUT, _SERVING_INPUT])
    def serve(self, input_ids: tf.Tensor, attention_mask: tf.Tensor, token_type_ids: tf.Tensor) -> dict[str, tf.Tensor]:
        # Fail loudly instead of broadcasting a too-short slice of the position table.
        tf.debugging.assert_less_equal(
            tf.shape(input_ids)[1], MAX_SEQUENCE_LENGTH, message="sequence longer than max_sequence_length"
        )
        return {"logits": self.logits(input_ids, attention_mask, token_type_ids)}


class _Adam:
    """Adam with bias correction; its slots live outside the model so they are not exported."""

    def __init__(self, variables: Sequence[tf.Variable], beta1: float = 0.9, beta2: float = 0.999) -> None:
        self.variables = list(variables)
        self.beta1, self.beta2 = beta1, beta2
        self.moments = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self.variables]
        self.velocities = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self.variables]
        self.step = tf.Variable(0.0, trainable=False)

    def apply(self, gradients: Sequence[tf.Tensor], learning_rate: tf.Tensor) -> None:
        self.step.assign_add(1.0)
        correction = tf.sqrt(1.0 - self.beta2**self.step) / (1.0 - self.beta1**self.step)
        for variable, gradient, moment, velocity in zip(
            self.variables, gradients, self.moments, self.velocities, strict=True
        ):
            moment.assign(self.beta1 * moment + (1.0 - self.beta1) * gradient)
            velocity.assign(self.beta2 * velocity + (1.0 - self.beta2) * tf.square(gradient))
            variable.assign_sub(learning_rate * correction * moment / (tf.sqrt(velocity) + 1e-7))


def _encode(tokenizer: BertTokenizerFast, texts: Sequence[str]) -> dict[str, np.ndarray]:
    # One padded length for the whole set keeps the training step at a single traced shape.
    encoded = tokenizer(list(texts), padding=True, max_length=MAX_SEQUENCE_LENGTH, truncation=True, return_tensors="np")
    return {name: encoded[name].astype(np.int32) for name in ("input_ids", "attention_mask", "token_type_ids")}


def _corrupt(
    input_ids: np.ndarray, special_ids: np.ndarray, vocab_size: int, rate: float, rng: np.random.Generator
) -> np.ndarray:
    """Replace a ``rate`` share of the ordinary tokens by random ones.

    Without this the encoder latches on to whatever it saw next to the label words, and a sentence with unseen
    words (split into word pieces it never trained on) flips to a wrong label; learning to ignore random tokens is
    what makes held-out templates and real sentences work.
    """
    candidates = ~np.isin(input_ids, special_ids)
    replace = candidates & (rng.random(input_ids.shape) < rate)
    noisy = input_ids.copy()
    regular = np.setdiff1d(np.arange(vocab_size), special_ids)
    noisy[replace] = rng.choice(regular, size=int(replace.sum()))
    return noisy


def _train(
    model: _BertClassifier,
    inputs: dict[str, np.ndarray],
    labels: np.ndarray,
    special_ids: np.ndarray,
    vocab_size: int,
    config: _TrainingConfig,
    seed: int,
) -> float:
    optimizer = _Adam(model.trainable_variables)
    variables = optimizer.variables

    @tf.function(reduce_retracing=True)
    def step(
        input_ids: tf.Tensor, attention_mask: tf.Tensor, token_type_ids: tf.Tensor, y: tf.Tensor, lr: tf.Tensor
    ) -> tf.Tensor:
        with tf.GradientTape() as tape:
            logits = model.logits(input_ids, attention_mask, token_type_ids)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        # Embedding gradients arrive as IndexedSlices; the vocabulary is tiny, so dense updates cost nothing.
        gradients = [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]
        gradients, _ = tf.clip_by_global_norm(gradients, 1.0)
        optimizer.apply(gradients, lr)
        return loss

    batch_rng = np.random.default_rng(seed)
    batches_per_epoch = len(labels) // config.batch_size
    permutation = batch_rng.permutation(len(labels))
    loss = float("nan")
    for step_index in range(config.steps):
        position = step_index % batches_per_epoch
        if position == 0 and step_index:
            permutation = batch_rng.permutation(len(labels))
        batch = permutation[position * config.batch_size : (position + 1) * config.batch_size]
        # Linear warm-up then linear decay: the usual BERT schedule, which keeps a post-LN stack stable at this rate.
        warmup = min(1.0, (step_index + 1) / config.warmup_steps)
        decay = 1.0 - step_index / config.steps
        lr = tf.constant(config.learning_rate * min(warmup, decay), tf.float32)
        loss = float(
            step(
                tf.constant(
                    _corrupt(inputs["input_ids"][batch], special_ids, vocab_size, config.token_noise, batch_rng)
                ),
                tf.constant(inputs["attention_mask"][batch]),
                tf.constant(inputs["token_type_ids"][batch]),
                tf.constant(labels[batch], tf.int32),
                lr,
            )
        )
    return loss


def _accuracy(model: _BertClassifier, inputs: dict[str, np.ndarray], labels: np.ndarray) -> float:
    logits = model.serve(**{name: tf.constant(value) for name, value in inputs.items()})["logits"]
    return float(np.mean(np.argmax(logits.numpy(), axis=-1) == labels))


def train_demo_model(spec: DemoModelSpec, out_dir: Path, *, seed: int = 0) -> TrainedModel:
    """Generate text for ``spec``, train a tiny BERT classifier on it and write it to ``out_dir / spec.name``.

    The templates are split by ``seed`` into training and held-out templates; held-out texts use only held-out
    templates and never equal a training text, so the held-out accuracy measures generalisation to unseen sentence
    structures. The same ``spec`` and ``seed`` give the same data, split, vocabulary and initial weights; the trained
    weights can still differ in the last bits between runs (multi-threaded float reductions), and so, slightly, can
    the accuracy.

    Args:
        spec: the model to train, e.g. an entry of ``DEMO_MODELS``.
        out_dir: parent folder; created if missing.
        seed: seeds the text generator, the split, the weight initialisation and the batch order.

    Returns:
        The model's name, its folder ``out_dir / spec.name`` (archive layout as in the module doc) and its
        held-out accuracy.

    Raises:
        FileExistsError: if ``out_dir / spec.name`` exists and is not empty. Refusing, rather than merging, matters
            because the server picks the highest numeric version folder: a stale ``1/`` would shadow the new ``0/``.
        RuntimeError: if the held-out accuracy is below ``MIN_HELD_OUT_ACCURACY``; nothing is written then.
    """
    model_dir = Path(out_dir) / spec.name
    if model_dir.exists() and any(model_dir.iterdir()):
        raise FileExistsError(f"{model_dir} is not empty; demo models are written to a fresh folder")
    started = time.perf_counter()
    encoder_config, training = EncoderShape(), _TrainingConfig()

    rng = random.Random(seed)
    templates = list(spec.templates)
    rng.shuffle(templates)
    held_out_count = max(1, round(len(templates) * training.held_out_template_fraction))
    held_out_templates, train_templates = templates[:held_out_count], templates[held_out_count:]
    train_texts, train_labels = _generate(spec, train_templates, training.train_examples, rng, frozenset())
    held_out_texts, held_out_labels = _generate(
        spec, held_out_templates, training.held_out_examples, rng, frozenset(train_texts)
    )

    tokenizer = _build_tokenizer(train_texts, training.vocab_size)
    # After the vocabulary is built, so the made-up words stay out of it and split into pieces like real unknowns.
    letters = "".join(sorted({c for text in train_texts for c in text if c.isalpha()}))
    noisy_train_texts = [_with_unseen_words(t, letters, training.unseen_word_rate, rng) for t in train_texts]
    train_inputs = _encode(tokenizer, noisy_train_texts)
    held_out_inputs = _encode(tokenizer, held_out_texts)

    model = _BertClassifier(len(tokenizer), len(spec.labels), encoder_config, tf.random.Generator.from_seed(seed))
    special_ids = np.asarray(tokenizer.all_special_ids, dtype=np.int32)
    final_loss = _train(model, train_inputs, np.asarray(train_labels), special_ids, len(tokenizer), training, seed)
    accuracy = _accuracy(model, held_out_inputs, np.asarray(held_out_labels))
    elapsed = time.perf_counter() - started
    logger.info(
        "trained %s: vocab %d, final loss %.4f, held-out accuracy %.3f on %d texts, %.1f s",
        spec.name,
        len(tokenizer),
        final_loss,
        accuracy,
        len(held_out_texts),
        elapsed,
    )
    if accuracy < MIN_HELD_OUT_ACCURACY:
        raise RuntimeError(
            f"demo model {spec.name!r} reached held-out accuracy {accuracy:.3f} < {MIN_HELD_OUT_ACCURACY} "
            f"(seed {seed}); refusing to write it"
        )

    model_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(model_dir)
    tf.saved_model.save(
        model, str(model_dir / "0"), signatures={"serving_default": model.serve.get_concrete_function()}
    )
    manifest = {"labels": list(spec.labels), "max_sequence_length": MAX_SEQUENCE_LENGTH}
    (model_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return TrainedModel(name=spec.name, model_dir=model_dir, held_out_accuracy=accuracy)


def parameter_count(shape: EncoderShape, *, vocab_size: int, num_labels: int) -> int:
    """How many weights a classifier of ``shape`` holds: embeddings, encoder layers, pooler and head."""
    hidden, intermediate = shape.hidden, shape.intermediate
    embeddings = (vocab_size + MAX_SEQUENCE_LENGTH + shape.type_vocab) * hidden + 2 * hidden
    layer = 4 * (hidden * hidden + hidden) + 2 * 2 * hidden + (hidden * intermediate + intermediate)
    layer += intermediate * hidden + hidden
    return embeddings + shape.layers * layer + (hidden * hidden + hidden) + (hidden * num_labels + num_labels)


def _synthetic_vocabulary(size: int) -> list[str]:
    """A WordPiece vocabulary of exactly ``size`` entries: the special tokens, the demo models' words and letters,
    then made-up whole words and ``##`` pieces, so any text tokenizes as with a real vocabulary of that size."""
    groups = [
        group
        for spec in DEMO_MODELS
        for slots in (*spec.label_words.values(), spec.neutral_words)
        for group in slots.values()
    ]
    words = {word.lower() for group in groups for phrase in group for word in re.findall(r"\w+", phrase)}
    letters = [chr(code) for code in range(ord("a"), ord("z") + 1)] + [str(digit) for digit in range(10)]
    vocabulary = list(dict.fromkeys([*_SPECIAL_TOKENS, *letters, *(f"##{c}" for c in letters), *sorted(words)]))
    seen = set(vocabulary)
    rng = random.Random(size)
    while len(vocabulary) < size:
        piece = "".join(rng.choices(letters[:26], k=rng.randint(2, 8)))
        token = piece if rng.random() < 0.7 else f"##{piece}"
        if token not in seen:
            seen.add(token)
            vocabulary.append(token)
    if len(vocabulary) > size:
        raise ValueError(f"a vocabulary needs at least {len(vocabulary)} entries for the demo words, not {size}")
    return vocabulary


def write_random_model(
    out_dir: Path,
    *,
    name: str,
    shape: EncoderShape = BERT_BASE,
    vocab_size: int = BERT_BASE_VOCAB_SIZE,
    labels: Sequence[str] = ("negative", "positive"),
    seed: int = 0,
) -> Path:
    """Write an untrained classifier of ``shape`` to ``out_dir / name`` in the archive layout of the demo models.

    Its weights are random, so its answers mean nothing, but its shapes and so its cost in memory, disk and time are
    those of a real model of that size (bert-base by default: 109M weights, as `parameter_count` gives):
    what benchmarks need, built in code instead of downloaded. Its tokenizer is a BERT WordPiece tokenizer over a
    vocabulary of exactly ``vocab_size`` entries made in code.

    Raises:
        FileExistsError: ``out_dir / name`` exists and is not empty.
    """
    model_dir = Path(out_dir) / name
    if model_dir.exists() and any(model_dir.iterdir()):
        raise FileExistsError(f"{model_dir} is not empty; random models are written to a fresh folder")
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "vocab.txt").write_text("\n".join(_synthetic_vocabulary(vocab_size)) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(
        vocab_file=str(model_dir / "vocab.txt"), do_lower_case=True, model_max_length=MAX_SEQUENCE_LENGTH
    )
    tokenizer.save_pretrained(model_dir)
    model = _BertClassifier(vocab_size, len(labels), shape, tf.random.Generator.from_seed(seed))
    tf.saved_model.save(
        model, str(model_dir / "0"), signatures={"serving_default": model.serve.get_concrete_function()}
    )
    manifest = {"labels": list(labels), "max_sequence_length": MAX_SEQUENCE_LENGTH}
    (model_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return model_dir
