"""Turning request bodies into texts and predictions into response bodies.

Accepted request bodies:

- ``application/json``: ``{"input_text": "..."}`` (the original format) or ``{"inputs": ["...", ...]}``.
- ``application/jsonlines``: one such record per line; every line is answered, in order.
- ``text/plain``: the whole body is one text.

Responses are JSON (``application/json``) or, for JSON Lines requests by default, JSON Lines: per text an object
with ``label``, ``scores`` (label -> probability) and the model's output row as ``logits`` or ``probabilities``
(or, for a model whose ``mme.json`` asks for ``raw`` answers, that row alone); a single text gives one answer, a
list a list.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from handler.errors import BadRequestError, NotAcceptableError, UnsupportedContentTypeError

JSON = "application/json"
JSON_LINES = "application/jsonlines"
TEXT = "text/plain"
_JSON_LINES_ALIASES = frozenset({JSON_LINES, "application/jsonl", "application/x-jsonlines", "application/json-lines"})


@dataclass(frozen=True)
class Record:
    """One request record: its texts, and whether the client sent one text (answered by an object) or a list."""

    texts: tuple[str, ...]
    single: bool


@dataclass(frozen=True)
class DecodedRequest:
    """Everything in one request body, in order, and the format it came in."""

    records: tuple[Record, ...]
    content_type: str

    @property
    def texts(self) -> list[str]:
        """All texts of all records, flattened in order (what one model call predicts)."""
        return [text for record in self.records for text in record.texts]


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one text: the label, every label's probability, and the model's output row."""

    label: str
    scores: dict[str, float]
    output: list[float]
    #: ``logits`` or ``probabilities``: what ``output`` holds, and its key in the answer.
    output_kind: str = "logits"

    def to_json(self) -> dict[str, object]:
        """The response shape of one prediction."""
        return {"label": self.label, "scores": self.scores, self.output_kind: self.output}


def media_type(header: str | None) -> str:
    """The bare, lower-case media type of a header (``"Application/JSON; charset=utf-8"`` -> ``application/json``)."""
    return (header or "").split(";", 1)[0].strip().lower()


def _text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise BadRequestError(f"{where} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise BadRequestError(f"{where} is empty: send at least one non-blank character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        # JSON's "\ud800" escapes decode to lone surrogates, which no tokenizer can take.
        raise BadRequestError(
            f"{where} is not valid Unicode: a lone surrogate {value[error.start]!r} at position {error.start} "
            "(send a UTF-16 surrogate only as half of a pair)"
        ) from None
    return value


def _record(obj: object, where: str) -> Record:
    if not isinstance(obj, dict):
        raise BadRequestError(f'{where} must be a JSON object with "input_text" or "inputs"')
    if "input_text" in obj and "inputs" in obj:
        raise BadRequestError(f'{where} has both "input_text" and "inputs": send one of them')
    if "input_text" in obj:
        return Record(texts=(_text(obj["input_text"], f'{where}: "input_text"'),), single=True)
    if "inputs" in obj:
        inputs = obj["inputs"]
        if isinstance(inputs, str):
            return Record(texts=(_text(inputs, f'{where}: "inputs"'),), single=True)
        if not isinstance(inputs, list):
            raise BadRequestError(f'{where}: "inputs" must be a list of strings, got {type(inputs).__name__}')
        if not inputs:
            raise BadRequestError(f'{where}: "inputs" is an empty list: send at least one text')
        texts = tuple(_text(text, f'{where}: "inputs"[{i}]') for i, text in enumerate(inputs))
        return Record(texts=texts, single=False)
    raise BadRequestError(f'{where} has no "input_text" or "inputs" field (keys: {sorted(obj)[:5]})')


def _json(line: str, where: str) -> object:
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise BadRequestError(f"{where} is not valid JSON: {error}") from None
    except RecursionError:  # Python's parser recurses once per nesting level
        raise BadRequestError(f"{where} is nested too deeply to be a request: send a flat JSON object") from None


def decode_request(body: bytes | bytearray | str | None, content_type: str | None, *, max_texts: int) -> DecodedRequest:
    """Parse a request body into records of texts.

    Raises:
        UnsupportedContentTypeError: ``content_type`` is not JSON, JSON Lines or plain text.
        BadRequestError: the body is empty, malformed, mistyped, has a blank text or more than ``max_texts`` texts.
    """
    kind = media_type(content_type) or JSON
    if kind in _JSON_LINES_ALIASES:
        kind = JSON_LINES
    if kind not in {JSON, JSON_LINES, TEXT}:
        raise UnsupportedContentTypeError(
            f"Content-Type {content_type!r} is not supported: use {JSON}, {JSON_LINES} or {TEXT}"
        )
    if body is None:
        raise BadRequestError("the request body is empty")
    if isinstance(body, bytes | bytearray):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError as error:
            raise BadRequestError(f"the request body is not UTF-8: {error}") from None
    if not body.strip():
        raise BadRequestError("the request body is empty")

    if kind == TEXT:
        records: tuple[Record, ...] = (Record(texts=(body,), single=True),)
    elif kind == JSON:
        records = (_record(_json(body, "the body"), "the body"),)
    else:
        lines = [(number, line) for number, line in enumerate(body.splitlines(), start=1) if line.strip()]
        records = tuple(_record(_json(line, f"line {number}"), f"line {number}") for number, line in lines)

    count = sum(len(record.texts) for record in records)
    if count > max_texts:
        raise BadRequestError(f"the request has {count} texts; at most {max_texts} are allowed per request")
    return DecodedRequest(records=records, content_type=kind)


def response_type(accept: str | None, request: DecodedRequest) -> str:
    """The response media type for an ``Accept`` header: JSON, or JSON Lines (the default for JSON Lines requests).

    Raises:
        NotAcceptableError: ``accept`` allows neither.
    """
    default = JSON_LINES if request.content_type == JSON_LINES else JSON
    offered = [media_type(part) for part in (accept or "").split(",") if part.strip()]
    for kind in offered or ["*/*"]:
        if kind in {"*/*", "application/*"}:
            return default
        if kind == JSON:
            return JSON
        if kind in _JSON_LINES_ALIASES:
            return JSON_LINES
    raise NotAcceptableError(f"Accept {accept!r} is not supported: use {JSON} or {JSON_LINES}")


def encode_response(
    predictions: Sequence[Prediction], request: DecodedRequest, accept_type: str, *, raw: bool = False
) -> bytes:
    """Serialize predictions (one per text of ``request``, in order) as ``accept_type``.

    ``raw`` answers each text with the model's bare output row instead of the prediction object.
    """
    answers: list[object] = []
    position = 0
    for record in request.records:
        chunk = [p.output if raw else p.to_json() for p in predictions[position : position + len(record.texts)]]
        position += len(record.texts)
        answers.append(chunk[0] if record.single else chunk)
    if accept_type == JSON_LINES:
        return "".join(json.dumps(answer) + "\n" for answer in answers).encode("utf-8")
    if request.content_type == JSON_LINES:
        return json.dumps(answers).encode("utf-8")
    return json.dumps(answers[0]).encode("utf-8")


def encode_error(message: str) -> bytes:
    """The JSON error body: ``{"error": message}``."""
    return json.dumps({"error": message}).encode("utf-8")
