"""Loading a model folder and predicting with it, behind one small interface.

The request path (``handler.service``) only sees :class:`TextClassifier`; today's runtime loads one TensorFlow
SavedModel per worker process, and a shared runtime can replace it without touching request handling.

Model folder (an extracted ``<name>.tar.gz``):

- the highest numeric version folder (``0/`` in the original archives) holding a TensorFlow SavedModel with a
  ``serving_default`` signature (a SavedModel at the root is accepted too);
- the tokenizer saved with transformers' ``save_pretrained``, at the root or in ``tokenizer/``; archives without
  one use the container-wide default tokenizer (``MME_DEFAULT_TOKENIZER_DIR``);
- optionally ``mme.json``, see :class:`handler.manifest.Manifest`; how the signature is fed and read is
  :mod:`handler.signature`.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from handler.codec import Prediction
from handler.errors import ModelLoadError, ModelOutOfMemoryError
from handler.manifest import MANIFEST_FILE, Manifest, OutputKind, ResponseFormat
from handler.signature import (
    DEFAULT_MAX_SEQUENCE_LENGTH,
    SIGNATURE,
    ServingPlan,
    SignatureDescription,
    describe_signature,
    plan_serving,
)

if TYPE_CHECKING:
    from handler.settings import ServingSettings

logger = logging.getLogger(__name__)

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
_WARM_UP_TEXT = "warm up"
#: A text long enough to fill any sequence length: each "warm" is at least one token.
_LONG_TEXT_WORD = "warm "


class TextClassifier(Protocol):
    """A loaded model: what the request path needs and nothing more."""

    @property
    def labels(self) -> tuple[str, ...]:
        """Class names, in output order."""
        ...

    @property
    def response_format(self) -> ResponseFormat:
        """What a text is answered with: the prediction object, or the bare output row."""
        ...

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """One prediction per text, in order.

        Raises:
            ModelOutOfMemoryError: the runtime ran out of memory.
        """
        ...


def find_saved_model(model_dir: Path) -> Path:
    """The SavedModel folder: the highest numeric version folder holding one, else ``model_dir`` itself.

    Raises:
        ModelLoadError: there is no ``saved_model.pb`` in a version folder or at the root.
    """
    versions = sorted(
        (int(child.name), child)
        for child in model_dir.iterdir()
        if child.is_dir() and child.name.isdigit() and (child / "saved_model.pb").is_file()
    )
    if versions:
        return versions[-1][1]
    if (model_dir / "saved_model.pb").is_file():
        return model_dir
    present = sorted(child.name for child in model_dir.iterdir())[:10]
    raise ModelLoadError(
        f"no TensorFlow SavedModel in {model_dir}: expected <version>/saved_model.pb (for example 0/saved_model.pb); "
        f"found {present}"
    )


def find_tokenizer(model_dir: Path, default_dir: Path | None) -> Path:
    """The tokenizer folder: the archive root, else ``tokenizer/``, else ``default_dir``.

    Raises:
        ModelLoadError: none of them holds tokenizer files.
    """
    shipped = archive_tokenizer(model_dir)
    if shipped is not None:
        return shipped
    if default_dir is not None:
        if _holds_tokenizer(default_dir):
            return default_dir
        raise ModelLoadError(f"the default tokenizer folder {default_dir} (MME_DEFAULT_TOKENIZER_DIR) has no tokenizer")
    raise ModelLoadError(
        f"no tokenizer in {model_dir}: save one with save_pretrained at the archive root or in tokenizer/ "
        f"(expected one of {list(_TOKENIZER_FILES)}), or give the container a default tokenizer "
        "(MME_DEFAULT_TOKENIZER_DIR: the stage setting default_tokenizer, or mme serve --default-tokenizer)"
    )


def configure_tensorflow(settings: ServingSettings) -> None:
    """Apply the thread settings; must run before TensorFlow executes its first op in this process."""
    import tensorflow as tf

    try:
        if settings.tf_intra_op_threads:
            tf.config.threading.set_intra_op_parallelism_threads(settings.tf_intra_op_threads)
        if settings.tf_inter_op_threads:
            tf.config.threading.set_inter_op_parallelism_threads(settings.tf_inter_op_threads)
    except RuntimeError:
        # The runtime is already initialised (a second model in the same process): the first settings hold.
        logger.debug("TensorFlow threads already configured")


def _holds_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in _TOKENIZER_FILES)


def archive_tokenizer(model_dir: Path) -> Path | None:
    """The tokenizer the archive ships (at its root or in ``tokenizer/``), or None."""
    return next((folder for folder in (model_dir, model_dir / "tokenizer") if _holds_tokenizer(folder)), None)


def _sigmoid(value: float) -> float:
    if value >= 0:
        return 1.0 / (1.0 + math.exp(-value))
    exp = math.exp(value)
    return exp / (1.0 + exp)


def probabilities_of(row: Sequence[float], kind: OutputKind) -> list[float]:
    """Class probabilities of one output row: the row itself when the model outputs probabilities, else its softmax;
    a single column is a binary classifier, ``[1 - p, p]``."""
    if len(row) == 1:
        p = row[0] if kind is OutputKind.PROBABILITIES else _sigmoid(row[0])
        return [1.0 - p, p]
    if kind is OutputKind.PROBABILITIES:
        return list(row)
    top = max(row)
    exps = [math.exp(value - top) for value in row]
    total = sum(exps)
    return [value / total for value in exps]


def prediction_of(row: Sequence[float], labels: Sequence[str], kind: OutputKind) -> Prediction:
    """The prediction for one output row: the most probable label, every label's probability, and the row."""
    probabilities = probabilities_of(row, kind)
    best = max(range(len(probabilities)), key=probabilities.__getitem__)
    return Prediction(
        label=labels[best],
        scores=dict(zip(labels, probabilities, strict=True)),
        output=list(row),
        output_kind=str(kind),
    )


def _labels(manifest: Manifest, plan: ServingPlan) -> tuple[str, ...]:
    classes = None if plan.output_width is None else max(plan.output_width, 2)
    if manifest.labels is None:
        if classes is None:
            raise ModelLoadError(
                f"the output {plan.output_name!r} has no static class count: list the labels in {MANIFEST_FILE} "
                '("labels": [...]) or pass `mme package --labels a,b,...`'
            )
        return tuple(f"LABEL_{i}" for i in range(classes))
    if classes is not None and len(manifest.labels) != classes:
        outputs = (
            "one probability or logit (a binary classifier: 2 labels)"
            if plan.output_width == 1
            else f"{classes} logits"
        )
        raise ModelLoadError(f"{MANIFEST_FILE} lists {len(manifest.labels)} labels but the model outputs {outputs}")
    return manifest.labels


class TensorFlowTextClassifier:
    """A SavedModel signature and its tokenizer, in this process."""

    def __init__(
        self,
        *,
        saved_model: Any,
        tokenizer: Any,
        labels: tuple[str, ...],
        plan: ServingPlan,
        response_format: ResponseFormat = ResponseFormat.PREDICTION,
        tokenizer_lock: threading.Lock | None = None,
    ) -> None:
        # Holding the loaded object keeps the variables the signature reads alive.
        self._saved_model = saved_model
        self._signature = saved_model.signatures[SIGNATURE]
        self._tokenizer = tokenizer
        # A fast tokenizer called from two threads at once fails with "Already borrowed" (each call with padding or
        # truncation settings changes the Rust tokenizer's state), and the shared model host predicts on threads.
        self._tokenizer_lock = tokenizer_lock or threading.Lock()
        self._labels = labels
        self.plan = plan
        self._response_format = response_format

    @property
    def labels(self) -> tuple[str, ...]:
        return self._labels

    def with_length(self, max_sequence_length: int) -> TensorFlowTextClassifier:
        """The same model and tokenizer, truncating texts to `max_sequence_length` tokens."""
        return TensorFlowTextClassifier(
            saved_model=self._saved_model,
            tokenizer=self._tokenizer,
            labels=self._labels,
            plan=replace(self.plan, max_sequence_length=max_sequence_length),
            response_format=self._response_format,
            tokenizer_lock=self._tokenizer_lock,
        )

    @property
    def response_format(self) -> ResponseFormat:
        return self._response_format

    def outputs(self, texts: Sequence[str]) -> list[list[float]]:
        """The chosen output's rows, one per text, as the model gives them.

        Raises:
            ModelOutOfMemoryError: TensorFlow could not allocate memory.
        """
        import tensorflow as tf

        wanted = self.plan.tokenizer_outputs()
        with self._tokenizer_lock:
            encoded = self._tokenizer(
                list(texts),
                # A static signature length takes exactly that many tokens; a dynamic one the batch's longest text.
                padding="max_length" if self.plan.static_length else True,
                truncation=True,
                max_length=self.plan.max_sequence_length,
                return_tensors="np",
                return_token_type_ids="token_type_ids" in wanted,
                return_attention_mask="attention_mask" in wanted,
            )
        feeds = {
            binding.signature_input: tf.constant(encoded[binding.tokenizer_output], dtype=binding.dtype)
            for binding in self.plan.bindings
        }
        try:
            outputs = self._signature(**feeds)
        except tf.errors.ResourceExhaustedError as error:
            raise ModelOutOfMemoryError(f"out of memory while predicting: {error.message}") from error
        rows = outputs[self.plan.output_name].numpy().astype(float)
        return rows.reshape(len(texts), -1).tolist()

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return [prediction_of(row, self._labels, self.plan.output_kind) for row in self.outputs(texts)]


@dataclass(frozen=True, kw_only=True)
class ModelReading:
    """Everything learnt about a model folder before it predicts: what ``mme inspect`` reports."""

    manifest: Manifest
    saved_model_dir: Path
    saved_model: Any
    description: SignatureDescription
    plan: ServingPlan
    labels: tuple[str, ...]
    #: None when neither the archive nor the default folder holds one (``require_tokenizer=False`` only).
    tokenizer_dir: Path | None
    tokenizer: Any


def read_model_dir(model_dir: Path, settings: ServingSettings, *, require_tokenizer: bool = True) -> ModelReading:
    """Load the SavedModel and tokenizer of an extracted archive and work out how to serve them.

    Raises:
        ModelLoadError: the folder is not a servable archive; the message says what is missing or wrong.
        ModelOutOfMemoryError: TensorFlow ran out of memory while loading.
    """
    import tensorflow as tf

    if not model_dir.is_dir():
        raise ModelLoadError(f"model folder {model_dir} does not exist")
    manifest = Manifest.read(model_dir)
    saved_model_dir = find_saved_model(model_dir)
    if require_tokenizer:
        tokenizer_dir: Path | None = find_tokenizer(model_dir, settings.default_tokenizer_dir)
    else:
        tokenizer_dir = archive_tokenizer(model_dir) or _usable_default(settings.default_tokenizer_dir)
    configure_tensorflow(settings)

    try:
        loaded = tf.saved_model.load(str(saved_model_dir))
    except tf.errors.ResourceExhaustedError as error:
        raise ModelOutOfMemoryError(f"out of memory while loading {saved_model_dir}: {error.message}") from error
    except (OSError, ValueError, tf.errors.OpError) as error:
        raise ModelLoadError(f"cannot load the SavedModel in {saved_model_dir}: {error}") from error
    signatures = getattr(loaded, "signatures", {})
    if SIGNATURE not in signatures:
        raise ModelLoadError(
            f"the SavedModel in {saved_model_dir} has no {SIGNATURE!r} signature (has: {sorted(signatures)})"
        )
    description = describe_signature(signatures[SIGNATURE])

    tokenizer = None
    tokenizer_limit = DEFAULT_MAX_SEQUENCE_LENGTH
    if tokenizer_dir is not None:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"cannot load the tokenizer in {tokenizer_dir}: {error}") from error
        tokenizer_limit = int(getattr(tokenizer, "model_max_length", DEFAULT_MAX_SEQUENCE_LENGTH))
    plan = plan_serving(description, manifest, tokenizer_limit=tokenizer_limit)
    return ModelReading(
        manifest=manifest,
        saved_model_dir=saved_model_dir,
        saved_model=loaded,
        description=description,
        plan=plan,
        labels=_labels(manifest, plan),
        tokenizer_dir=tokenizer_dir,
        tokenizer=tokenizer,
    )


def _usable_default(default_dir: Path | None) -> Path | None:
    return default_dir if default_dir is not None and _holds_tokenizer(default_dir) else None


def classifier_of(reading: ModelReading) -> TensorFlowTextClassifier:
    """The classifier of a model reading that has a tokenizer, warmed up with one prediction.

    Raises:
        ModelLoadError: the tokenizer does not produce what the signature needs, or the output does not match the
            labels.
        ModelOutOfMemoryError: TensorFlow ran out of memory while warming up.
    """
    assert reading.tokenizer is not None, "read the model with its tokenizer"
    classifier = TensorFlowTextClassifier(
        saved_model=reading.saved_model,
        tokenizer=reading.tokenizer,
        labels=reading.labels,
        plan=reading.plan,
        response_format=reading.manifest.response_format or ResponseFormat.PREDICTION,
    )
    import tensorflow as tf

    try:
        warm_up = classifier.outputs([_WARM_UP_TEXT])
    except KeyError as error:
        raise ModelLoadError(
            f"the tokenizer in {reading.tokenizer_dir} produces no {error} for the signature"
        ) from None
    except tf.errors.OpError as error:
        # Typically token ids beyond the model's vocabulary: a tokenizer other than the one it was trained with.
        raise ModelLoadError(
            f"the model fails on a test text tokenized by {reading.tokenizer_dir}: {error.message.splitlines()[0]}; "
            "is this the tokenizer it was trained with?"
        ) from None
    width = len(warm_up[0])
    if max(width, 2) != len(reading.labels):
        raise ModelLoadError(
            f"the model gave {width} values per text for {len(reading.labels)} labels: list {max(width, 2)} labels "
            f"in {MANIFEST_FILE}"
        )
    if not reading.plan.static_length:
        classifier = classifier.with_length(_longest_length(classifier, reading))
    return classifier


def _fails_at(classifier: TensorFlowTextClassifier, length: int) -> bool:
    """True when the model refuses a text of `length` tokens (an index beyond its position embeddings, typically)."""
    import tensorflow as tf

    try:
        classifier.with_length(length).outputs([_LONG_TEXT_WORD * length])
    except tf.errors.InvalidArgumentError:
        return True
    except ModelOutOfMemoryError:
        return False  # a matter of memory, answered with 507 at predict time, not a length the model refuses
    return False


def _longest_length(classifier: TensorFlowTextClassifier, reading: ModelReading) -> int:
    """The sequence length to serve a dynamic-length model with: the planned one if the model takes it.

    A model trained on shorter texts than the default length (position embeddings of 64, say) works on the short
    warm-up text and fails on long ones, which would be an opaque error at predict time. Without a
    `max_sequence_length` in mme.json, serve it at the longest length it takes (a binary search, a few test
    predictions); with one, refuse the load and say so.

    Raises:
        ModelLoadError: the model fails at the length mme.json sets.
    """
    planned = classifier.plan.max_sequence_length
    if not _fails_at(classifier, planned):
        return planned
    if reading.manifest.max_sequence_length is not None:
        raise ModelLoadError(
            f"the model fails on texts of {planned} tokens, the max_sequence_length in {MANIFEST_FILE}: set it to "
            "the length the model was trained with"
        )
    works, fails = 1, planned
    while fails - works > 1:
        middle = (works + fails) // 2
        if _fails_at(classifier, middle):
            fails = middle
        else:
            works = middle
    logger.warning(
        "the model fails on texts of %d tokens; serving it at %d tokens (longer texts are truncated). Set "
        "max_sequence_length in %s to say so.",
        planned,
        works,
        MANIFEST_FILE,
    )
    return works


def load_model_dir(model_dir: Path, settings: ServingSettings) -> TensorFlowTextClassifier:
    """Load an extracted model archive and warm it up with one prediction.

    Raises:
        ModelLoadError: the folder is not a servable archive; the message says what is missing or wrong.
        ModelOutOfMemoryError: TensorFlow ran out of memory while loading or warming up.
    """
    reading = read_model_dir(model_dir, settings)
    classifier = classifier_of(reading)
    logger.info(
        "loaded %s: SavedModel %s, tokenizer %s, labels %s, inputs %s, %s tokens (%s), output %r (%s, %s)",
        model_dir,
        reading.saved_model_dir.name,
        reading.tokenizer_dir,
        list(reading.labels),
        {binding.signature_input: binding.tokenizer_output for binding in reading.plan.bindings},
        reading.plan.max_sequence_length,
        "fixed" if reading.plan.static_length else "at most",
        reading.plan.output_name,
        reading.plan.output_kind,
        reading.plan.output_kind_source,
    )
    return classifier
