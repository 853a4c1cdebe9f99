"""The MMS entry point: ``handle(data, context)``, the life of a request.

MMS calls ``handle(None, context)`` once when a worker starts (load), then ``handle(batch, context)`` per request
batch: decode -> predict -> encode. Errors with a status (:mod:`handler.errors`) are answered per request with a
JSON body and that status; the worker keeps serving. A ``MemoryError`` propagates so that MMS answers 507.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from handler.codec import encode_error
from handler.errors import HandlerError, ModelLoadError, ModelOutOfMemoryError, ModelTooLargeError
from handler.memory import (
    LOADING_OOM_SCORE_ADJ,
    SERVING_OOM_SCORE_ADJ,
    beyond_total_memory,
    check_room_for,
    offer_to_oom_killer,
)
from handler.mms_request import leave_load_error, reason_phrase, request_body, request_headers
from handler.model import TextClassifier, find_saved_model, load_model_dir
from handler.request import answer_request
from handler.settings import ServingSettings, load_error_file
from handler.telemetry.reporter import reported_request, reporter

logger = logging.getLogger(__name__)

# One worker process serves one model: the loaded classifier lives as long as the worker.
_classifier: TextClassifier | None = None
_settings: ServingSettings | None = None


def _load(context: Any) -> None:
    global _classifier, _settings
    _settings = ServingSettings.from_env()
    logging.getLogger("handler").setLevel(_settings.log_level)
    model_dir = Path(context.system_properties["model_dir"])
    model_name = str(getattr(context, "model_name", model_dir.name))
    # While it loads, this worker is the OOM killer's first choice: a misjudged load must not take a serving model.
    offer_to_oom_killer(LOADING_OOM_SCORE_ADJ)
    started = time.perf_counter()
    try:
        if model_dir.is_dir():
            check_room_for(find_saved_model(model_dir), reserve_mb=_settings.load_memory_reserve_mb)
        _classifier = load_model_dir(model_dir, _settings)
        offer_to_oom_killer(SERVING_OOM_SCORE_ADJ)
        reporter(_settings).load(model_name, time.perf_counter() - started, ok=True)
    except ModelOutOfMemoryError as error:
        refusal = beyond_total_memory(error)
        _report_load_error(model_name, str(refusal), exceeds_total_memory=isinstance(refusal, ModelTooLargeError))
        if refusal is error:
            raise
        raise refusal from error
    except ModelLoadError as error:
        _report_load_error(model_name, str(error), exceeds_total_memory=False)
        raise


def _report_load_error(model_name: str, reason: str, *, exceeds_total_memory: bool) -> None:
    assert _settings is not None
    # The container's log is the endpoint's CloudWatch log on AWS; the file is for a front end on this host.
    logger.error("cannot load model %s: %s", model_name, reason)
    leave_load_error(load_error_file(_settings.run_dir, model_name), reason, exceeds_total_memory=exceeds_total_memory)


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[bytes] | None:
    """MMS's entry point: load on ``None``, else answer every request in ``data``, in order.

    Raises:
        ModelLoadError: at load, when the model folder is not servable (MMS fails the load).
        MemoryError: when the model does not fit (MMS answers 507).
    """
    if data is None:
        _load(context)
        return None
    if _classifier is None or _settings is None:
        _load(context)
    classifier, settings = _classifier, _settings
    model_name = str(getattr(context, "model_name", ""))
    assert classifier is not None
    assert settings is not None
    responses: list[bytes] = []
    for index, request in enumerate(data):
        headers = request_headers(context, index)
        payload = request_body(request)
        with reported_request(settings, model_name=model_name, headers=headers, body=payload) as answered:
            try:
                answer = answer_request(
                    classifier,
                    payload,
                    headers.get("content-type"),
                    headers.get("accept"),
                    max_texts=settings.max_texts_per_request,
                )
                status, body, content_type = 200, answer.body, answer.content_type
                answered.model_seconds, answered.batch_size = answer.model_seconds, answer.batch_size
            except HandlerError as error:
                # Not the message: it may quote the request, and logs never hold request text.
                logger.info("request %d rejected with %d (%s)", index, error.status, type(error).__name__)
                status = error.status
                context.set_response_status(error.status, reason_phrase(error.message), index)
                body, content_type = encode_error(error.message), "application/json"
            context.set_response_content_type(index, content_type)
            answered.status, answered.response, answered.response_type = status, body, content_type
        # No response headers, on purpose (so X-Amzn-SageMaker-Custom-Attributes is not echoed): MMS 1.1.11's front
        # end decodes a worker's header map without waiting for all of it (CodecUtils.readMap ignores a buffer
        # under-run), so a map that straddles a socket read kills the worker, which happened from about 440
        # characters of echoed attributes on.
        responses.append(body)
    return responses
