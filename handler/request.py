"""One request's life, whatever runs the model: decode -> predict -> encode.

Both runtimes answer through :func:`answer_request` (the per-worker handler in :mod:`handler.service`, and the
shared model host in :mod:`handler.host.server`), so the same request gets the same bytes from either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from handler.codec import decode_request, encode_response, response_type
from handler.manifest import ResponseFormat

if TYPE_CHECKING:
    from handler.model import TextClassifier


def answer_request(
    classifier: TextClassifier,
    body: bytes | bytearray | str | None,
    content_type: str | None,
    accept: str | None,
    *,
    max_texts: int,
) -> tuple[bytes, str]:
    """The response body and its media type for one request.

    Raises:
        HandlerError: bad input (400), an unsupported ``content_type`` (415) or ``accept`` (406).
        ModelOutOfMemoryError: the runtime ran out of memory (507).
    """
    decoded = decode_request(body, content_type, max_texts=max_texts)
    accept_type = response_type(accept, decoded)
    predictions = classifier.predict(decoded.texts)
    raw = classifier.response_format is ResponseFormat.RAW
    return encode_response(predictions, decoded, accept_type, raw=raw), accept_type
