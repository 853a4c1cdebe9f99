"""One request's life, whatever runs the model: decode -> predict -> encode.

Both runtimes answer through :func:`answer_request` (the per-worker handler in :mod:`handler.service`, and the
shared model host in :mod:`handler.host.server`), so the same request gets the same bytes from either.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from handler.codec import Prediction, decode_request, encode_response, response_type
from handler.manifest import ResponseFormat

if TYPE_CHECKING:
    from handler.model import TextClassifier


@runtime_checkable
class BatchingPredictor(Protocol):
    """A classifier that may answer texts in a model call with other callers' texts (the model host's batcher)."""

    def predict_in_batch(self, texts: Sequence[str]) -> tuple[list[Prediction], int]:
        """The predictions of ``texts``, and how many texts the model call held."""
        ...


@dataclass(frozen=True)
class Answer:
    """One request's response body and media type, with the time its model call took and the texts it held."""

    body: bytes
    content_type: str
    model_seconds: float
    batch_size: int


def answer_request(
    classifier: TextClassifier,
    body: bytes | bytearray | str | None,
    content_type: str | None,
    accept: str | None,
    *,
    max_texts: int,
) -> Answer:
    """The answer to one request.

    Raises:
        HandlerError: bad input (400), an unsupported ``content_type`` (415) or ``accept`` (406).
        ModelOutOfMemoryError: the runtime ran out of memory (507).
    """
    decoded = decode_request(body, content_type, max_texts=max_texts)
    accept_type = response_type(accept, decoded)
    started = time.perf_counter()
    if isinstance(classifier, BatchingPredictor):
        predictions, batch_size = classifier.predict_in_batch(decoded.texts)
    else:
        predictions, batch_size = classifier.predict(decoded.texts), len(decoded.texts)
    model_seconds = time.perf_counter() - started
    raw = classifier.response_format is ResponseFormat.RAW
    body = encode_response(predictions, decoded, accept_type, raw=raw)
    return Answer(body, accept_type, model_seconds, batch_size)
