"""``mme.json``: the optional per-model settings at an archive's root, read and validated in one place.

Not called ``manifest.json``: MMS takes a root ``MANIFEST.json``, in any letter case, for a legacy MMS manifest and
fails the load. Every field is optional; :class:`Manifest` documents each default.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from handler.errors import ModelLoadError

MANIFEST_FILE = "mme.json"

#: What a tokenizer produces and a signature input can be bound to.
TOKENIZER_OUTPUTS = ("input_ids", "attention_mask", "token_type_ids")

_Choice = TypeVar("_Choice", bound=enum.StrEnum)


class OutputKind(enum.StrEnum):
    """What the chosen signature output holds."""

    #: Unnormalised scores: ``scores`` are their softmax (or the sigmoid of a single column).
    LOGITS = "logits"
    #: The model ends in a softmax or sigmoid: ``scores`` are its output as it is.
    PROBABILITIES = "probabilities"


class ResponseFormat(enum.StrEnum):
    """What one text is answered with."""

    #: ``{"label", "scores", "logits" | "probabilities"}``: the documented answer.
    PREDICTION = "prediction"
    #: The model's output row as a bare JSON list, as hand-made MME handlers answered (``model.predict(x)[0]``).
    RAW = "raw"


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """``mme.json``; every field is optional.

    - ``labels`` (default ``LABEL_0`` ... ``LABEL_{n-1}``; two for a single-column output): class names in output
      order.
    - ``max_sequence_length`` (default: the signature's static sequence length, else 128 or the tokenizer's lower
      limit): tokens per text; longer texts are truncated.
    - ``inputs`` (default: the well-known BERT names bind themselves, see :mod:`handler.signature`): signature input
      -> tokenizer output (``input_ids``, ``attention_mask`` or ``token_type_ids``), for inputs named otherwise.
    - ``output_name`` (default ``logits``, or the signature's only output): the output to read.
    - ``output_kind`` (default: ``probabilities`` when the graph ends in a softmax or sigmoid, else ``logits``).
    - ``response_format`` (default ``prediction``): ``raw`` answers the bare output row, for clients of a
      hand-made endpoint.
    - ``input_names`` (older archives): a list of inputs that are fed the tokenizer output of the same name.
    """

    labels: tuple[str, ...] | None = None
    max_sequence_length: int | None = None
    inputs: dict[str, str] | None = None
    output_name: str | None = None
    output_kind: OutputKind | None = None
    response_format: ResponseFormat | None = None
    input_names: tuple[str, ...] | None = None

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
        return cls.from_json(raw)

    @classmethod
    def from_json(cls, raw: object) -> Manifest:
        """Validate a parsed ``mme.json``.

        Raises:
            ModelLoadError: unknown keys or a mistyped value; the message names the key and what is allowed.
        """
        if not isinstance(raw, dict):
            raise ModelLoadError(f"{MANIFEST_FILE} must be a JSON object")
        allowed = [field.name for field in fields(cls)]
        unknown = set(raw) - set(allowed)
        if unknown:
            raise ModelLoadError(f"{MANIFEST_FILE} has unknown keys {sorted(unknown)}; allowed: {', '.join(allowed)}")
        labels = _string_tuple(raw, "labels")
        if labels is not None and len(set(labels)) != len(labels):
            raise ModelLoadError(f"{MANIFEST_FILE}: 'labels' has duplicates: {list(labels)}")
        return cls(
            labels=labels,
            max_sequence_length=_positive_int(raw, "max_sequence_length"),
            inputs=_bindings(raw, "inputs"),
            output_name=_string(raw, "output_name"),
            output_kind=_choice(raw, "output_kind", OutputKind),
            response_format=_choice(raw, "response_format", ResponseFormat),
            input_names=_string_tuple(raw, "input_names"),
        )

    def to_json(self) -> dict[str, Any]:
        """The fields that are set, as ``mme.json`` holds them."""
        out: dict[str, Any] = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if value is None:
                continue
            out[field.name] = list(value) if isinstance(value, tuple) else value
        return out

    def merged(self, overrides: Manifest) -> Manifest:
        """This manifest with every field ``overrides`` sets replaced (what ``mme package`` flags do)."""
        changes = {field.name: getattr(overrides, field.name) for field in fields(overrides)}
        return Manifest(**{**self.__dict__, **{name: value for name, value in changes.items() if value is not None}})

    def binding_overrides(self) -> dict[str, str]:
        """Signature input -> tokenizer output, from ``inputs`` and the older ``input_names``."""
        bindings = {name: name for name in self.input_names or ()}
        bindings.update(self.inputs or {})
        return bindings


def _string_tuple(raw: dict[str, Any], key: str) -> tuple[str, ...] | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
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


def _choice(raw: dict[str, Any], key: str, kind: type[_Choice]) -> _Choice | None:
    value = raw.get(key)
    if value is None:
        return None
    choices = [member.value for member in kind]
    if value not in choices:
        raise ModelLoadError(f"{MANIFEST_FILE}: {key!r} must be one of {choices}, not {value!r}")
    return kind(value)


def _bindings(raw: dict[str, Any], key: str) -> dict[str, str] | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, dict) or not value or not all(isinstance(name, str) and name for name in value):
        raise ModelLoadError(
            f"{MANIFEST_FILE}: {key!r} must map signature inputs to tokenizer outputs, "
            'e.g. {"mask": "attention_mask"}'
        )
    for name, output in value.items():
        if output not in TOKENIZER_OUTPUTS:
            raise ModelLoadError(
                f"{MANIFEST_FILE}: {key}[{name!r}] is {output!r}; a tokenizer output is one of "
                f"{', '.join(TOKENIZER_OUTPUTS)}"
            )
    return dict(value)
