"""What every MMS handler of ours shares: request headers, reason phrases, and the load-error file.

Kept free of TensorFlow and transformers imports: the thin handler of the shared model host uses it too.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def request_headers(context: Any, index: int) -> dict[str, str]:
    """The headers of request ``index`` of MMS's batch, with lower-case names."""
    properties = context.request_processor[index].get_request_properties() or {}
    return {str(key).lower(): value for key, value in properties.items() if isinstance(value, str)}


def request_body(request: dict[str, Any]) -> bytes | bytearray | str | None:
    """The body of one request of MMS's batch (MMS names it ``body``, or ``data`` for some clients)."""
    body = request.get("body")
    return request.get("data") if body is None else body


def reason_phrase(message: str) -> str:
    """``message`` as an HTTP reason phrase MMS can carry: ASCII only (``\\u00a1`` for ``¡``); the body has it exact.

    MMS 1.1.11's worker frames the phrase with its length in characters but writes its UTF-8 bytes, so one non-ASCII
    character (a JSON key quoted back to the client, say) desynchronises the stream and MMS kills the worker.
    """
    return message.encode("ascii", "backslashreplace").decode("ascii")


def leave_load_error(path: Path, reason: str, *, exceeds_total_memory: bool = False) -> None:
    """Write why a load failed where a front end on this host reads it, best effort: JSON ``{"reason": str,
    "exceeds_total_memory": bool}``, the latter true when no eviction can make the model fit."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"reason": reason, "exceeds_total_memory": exceeds_total_memory}), encoding="utf-8")
    except OSError as error:  # the reason is in the log already; a read-only run folder must not hide it
        logger.warning("cannot write %s: %s", path, error)
