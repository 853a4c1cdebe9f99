"""Loading a model folder and predicting with it, behind one small interface.

The request path (``handler.service``) only sees :class:`TextClassifier`; today's runtime loads one TensorFlow
SavedModel per worker process, and a shared runtime can replace it without touching request handling.

Model folder (an extracted ``<name>.tar.gz``):

- the highest numeric version folder (``0/`` in the original archives) holding a TensorFlow SavedModel with a
  ``serving_default`` signature (a SavedModel at the root is accepted too);
- the tokenizer saved with transformers' ``save_pretrained``, at the root or in ``tokenizer/``; archives without
  one use the container-wide default tokenizer (``MME_DEFAULT_TOKENIZER_DIR``);
- optionally ``mme.json``, see :class:`Manifest`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from handler.codec import Prediction
from handler.errors import ModelLoadError, ModelOutOfMemoryError

if TYPE_CHECKING:
    from handler.settings import ServingSettings

logger = logging.getLogger(__name__)

# Not "manifest.json": MMS takes a root MANIFEST.json, in any case, for a legacy MMS manifest and fails the load.
MANIFEST_FILE = "mme.json"
SIGNATURE = "serving_default"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
_DEFAULT_MAX_SEQUENCE_LENGTH = 128
_WARM_UP_TEXT = "warm up"


class TextClassifier(Protocol):
    """A loaded model: what the request path needs and nothing more."""

    @property
    def labels(self) -> tuple[str, ...]:
        """Class names, in logit order."""
        ...

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """One prediction per text, in order.

        Raises:
            ModelOutOfMemoryError: the runtime ran out of memory.
        """
        ...


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """``mme.json`` at the archive root; every field is optional.

    - ``labels`` (default ``LABEL_0`` ... ``LABEL_{n-1}``): class names in logit order.
    - ``max_sequence_length`` (default 128, or less if the tokenizer's own limit is lower): tokens per text;
      longer texts are truncated.
    - ``input_names`` (default ``input_ids``, ``attention_mask``, and ``token_type_ids`` when the signature has
      it): the signature inputs to feed, each a tokenizer output of that name.
    - ``output_name`` (default ``logits``, or the signature's only output): the output holding the logits.
    """

    labels: tuple[str, ...] | None = None
    max_sequence_length: int | None = None
    input_names: tuple[str, ...] | None = None
    output_name: str | None = None

    @classmethod
    def read(cls, model_dir: Path) -> Manifest:
        """Read and validate ``model_dir/mme.json``; a missing file gives all defaults.

        Raises:
            ModelLoadError: the file is not JSON, has unknown keys or a mistyped value.
        """
        path = model_dir / MANIFEST_FILE
        if not path.is_file():
            return cls()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ModelLoadError(f"{MANIFEST_FILE} is not valid JSON: {error}") from None
        if not isinstance(raw, dict):
            raise ModelLoadError(f"{MANIFEST_FILE} must be a JSON object")
        unknown = set(raw) - {"labels", "max_sequence_length", "input_names", "output_name"}
        if unknown:
            raise ModelLoadError(
                f"{MANIFEST_FILE} has unknown keys {sorted(unknown)}; "
                "allowed: labels, max_sequence_length, input_names, output_name"
            )
        return cls(
            labels=_string_tuple(raw, "labels"),
            max_sequence_length=_positive_int(raw, "max_sequence_length"),
            input_names=_string_tuple(raw, "input_names"),
            output_name=_string(raw, "output_name"),
        )


def _string_tuple(raw: dict[str, Any], key: str) -> tuple[str, ...] | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ModelLoadError(f"{MANIFEST_FILE}: {key!r} must be a non-empty list of non-empty strings")
    return tuple(value)


def _positive_int(raw: dict[str, Any], key: str) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 2:
        raise ModelLoadError(f"{MANIFEST_FILE}: {key!r} must be an integer >= 2")
    return value


def _string(raw: dict[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ModelLoadError(f"{MANIFEST_FILE}: {key!r} must be a non-empty string")
    return value


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
    for candidate in (model_dir, model_dir / "tokenizer"):
        if any((candidate / name).is_file() for name in _TOKENIZER_FILES):
            return candidate
    if default_dir is not None:
        if any((default_dir / name).is_file() for name in _TOKENIZER_FILES):
            return default_dir
        raise ModelLoadError(f"the default tokenizer folder {default_dir} (MME_DEFAULT_TOKENIZER_DIR) has no tokenizer")
    raise ModelLoadError(
        f"no tokenizer in {model_dir}: save one with save_pretrained at the archive root or in tokenizer/ "
        f"(expected one of {list(_TOKENIZER_FILES)}), or set MME_DEFAULT_TOKENIZER_DIR"
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


class TensorFlowTextClassifier:
    """A SavedModel signature and its tokenizer, in this process."""

    def __init__(
        self,
        *,
        saved_model: Any,
        tokenizer: Any,
        labels: tuple[str, ...],
        input_names: tuple[str, ...],
        output_name: str,
        max_sequence_length: int,
    ) -> None:
        # Holding the loaded object keeps the variables the signature reads alive.
        self._saved_model = saved_model
        self._signature = saved_model.signatures[SIGNATURE]
        self._tokenizer = tokenizer
        self._labels = labels
        self._input_names = input_names
        self._output_name = output_name
        self._max_sequence_length = max_sequence_length

    @property
    def labels(self) -> tuple[str, ...]:
        return self._labels

    def logits(self, texts: Sequence[str]) -> list[list[float]]:
        """Raw logits, one row per text.

        Raises:
            ModelOutOfMemoryError: TensorFlow could not allocate memory.
        """
        import tensorflow as tf

        encoded = self._tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self._max_sequence_length,
            return_tensors="np",
            return_token_type_ids="token_type_ids" in self._input_names,
        )
        feeds = {name: tf.constant(encoded[name], dtype=tf.int32) for name in self._input_names}
        try:
            outputs = self._signature(**feeds)
        except tf.errors.ResourceExhaustedError as error:
            raise ModelOutOfMemoryError(f"out of memory while predicting: {error.message}") from error
        return outputs[self._output_name].numpy().astype(float).tolist()

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return [self._prediction(row) for row in self.logits(texts)]

    def _prediction(self, logits: list[float]) -> Prediction:
        top = max(logits)
        exps = [math.exp(value - top) for value in logits]
        total = sum(exps)
        scores = {label: value / total for label, value in zip(self._labels, exps, strict=True)}
        best = max(range(len(logits)), key=logits.__getitem__)
        return Prediction(label=self._labels[best], scores=scores, logits=logits)


def load_model_dir(model_dir: Path, settings: ServingSettings) -> TensorFlowTextClassifier:
    """Load an extracted model archive and warm it up with one prediction.

    Raises:
        ModelLoadError: the folder is not a servable archive; the message says what is missing or wrong.
        ModelOutOfMemoryError: TensorFlow ran out of memory while loading or warming up.
    """
    import tensorflow as tf
    from transformers import AutoTokenizer

    if not model_dir.is_dir():
        raise ModelLoadError(f"model folder {model_dir} does not exist")
    manifest = Manifest.read(model_dir)
    saved_model_dir = find_saved_model(model_dir)
    tokenizer_dir = find_tokenizer(model_dir, settings.default_tokenizer_dir)
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
    signature = signatures[SIGNATURE]

    signature_inputs = set(signature.structured_input_signature[1])
    input_names = manifest.input_names or tuple(
        name for name in ("input_ids", "attention_mask", "token_type_ids") if name in signature_inputs
    )
    missing = [name for name in input_names if name not in signature_inputs]
    if missing or not input_names:
        raise ModelLoadError(
            f"the {SIGNATURE!r} signature takes {sorted(signature_inputs)}, not the inputs {list(input_names)}; "
            "name them with input_names in mme.json"
        )
    outputs = signature.structured_outputs
    output_name = manifest.output_name or ("logits" if "logits" in outputs else None)
    if output_name is None and len(outputs) == 1:
        output_name = next(iter(outputs))
    if output_name not in outputs:
        raise ModelLoadError(
            f"the {SIGNATURE!r} signature outputs {sorted(outputs)}: none is 'logits'; "
            "name the logits with output_name in mme.json"
        )
    num_labels = outputs[output_name].shape[-1]

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot load the tokenizer in {tokenizer_dir}: {error}") from error
    max_sequence_length = manifest.max_sequence_length or min(
        _DEFAULT_MAX_SEQUENCE_LENGTH, int(getattr(tokenizer, "model_max_length", _DEFAULT_MAX_SEQUENCE_LENGTH))
    )

    labels = manifest.labels
    if labels is None:
        if num_labels is None:
            raise ModelLoadError(f"the output {output_name!r} has no static class size: list labels in mme.json")
        labels = tuple(f"LABEL_{i}" for i in range(num_labels))
    elif num_labels is not None and len(labels) != num_labels:
        raise ModelLoadError(f"mme.json lists {len(labels)} labels but the model outputs {num_labels} logits")

    classifier = TensorFlowTextClassifier(
        saved_model=loaded,
        tokenizer=tokenizer,
        labels=labels,
        input_names=input_names,
        output_name=output_name,
        max_sequence_length=max_sequence_length,
    )
    try:
        warm_up = classifier.logits([_WARM_UP_TEXT])
    except KeyError as error:
        raise ModelLoadError(f"the tokenizer in {tokenizer_dir} produces no {error} for the signature") from None
    if len(warm_up[0]) != len(labels):
        raise ModelLoadError(f"the model gave {len(warm_up[0])} logits for {len(labels)} labels")
    logger.info(
        "loaded %s: SavedModel %s, tokenizer %s, labels %s, inputs %s",
        model_dir,
        saved_model_dir.name,
        tokenizer_dir,
        list(labels),
        list(input_names),
    )
    return classifier
