"""The MMS entry point of shared mode (``MME_MODEL_HOST=shared``): a worker without TensorFlow or transformers.

Each MMS worker forwards to the model host (:mod:`handler.host`): at load it leases its model on a connection of
its own, and per request it sends the raw body, content type and accept, and sets the host's answer. Statuses are
the per-worker handler's (:mod:`handler.service`): 400/406/415 bad input, 507 out of memory (a ``MemoryError``,
which MMS turns into 507), a failed load fails MMS's load with the reason file written. When the host is gone
(it died; ``serve`` restarts it), a request in flight is answered 503 and the next one reconnects and loads the
model again from the folder it was first loaded from; every wait on the host is bounded.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from handler.codec import encode_error
from handler.errors import HandlerError, ModelLoadError, ModelOutOfMemoryError, ModelTooLargeError
from handler.host.client import ModelHostClient, ModelHostUnavailableError
from handler.host.protocol import Message
from handler.mms_request import leave_load_error, reason_phrase, request_body, request_headers
from handler.settings import ServingSettings, load_error_file, model_host_socket
from handler.telemetry.reporter import reported_request, reporter

logger = logging.getLogger(__name__)

#: The status of a request the host could not answer (it died or restarted under it, or did not answer in time).
HOST_UNAVAILABLE_STATUS = 503


class _Lease:
    """This worker's model on the host: the connection holding its lease, and where to load it from again."""

    def __init__(self, settings: ServingSettings, model_name: str, model_dir: Path) -> None:
        self.settings = settings
        self.model_name = model_name
        self.model_dir = model_dir
        self.client = ModelHostClient(
            model_host_socket(settings.run_dir),
            connect_timeout=settings.model_host_start_timeout_seconds,
            # MMS gives up on the worker after its response timeout; the host's answer is no use after that.
            call_timeout=settings.response_timeout_seconds,
        )

    def load(self) -> None:
        """(Re)connect and load the model on the host.

        Raises:
            ModelLoadError: the host could not load the folder.
            ModelOutOfMemoryError: the model does not fit.
            ModelHostUnavailableError: the host could not be reached, or did not answer in time.
        """
        answer = self.client.call({"op": "load", "model": self.model_name, "model_dir": str(self.model_dir)})
        if answer.status == ModelOutOfMemoryError.status:
            too_large = bool(answer.fields.get("exceeds_total_memory"))
            raise (ModelTooLargeError if too_large else ModelOutOfMemoryError)(answer.message)
        if answer.status != 200:
            raise ModelLoadError(answer.message or f"the model host answered {answer.status}")

    def answer(self, body: Any, content_type: str | None, accept: str | None) -> Message:
        """The host's answer to one request: its status, ``content_type``, ``model_seconds``, ``batch_size``, and the
        body as payload (errors: ``message``).

        Raises:
            ModelHostUnavailableError: the host died under the request, did not answer in time, or (restarting)
                did not come back within the start timeout.
            ModelLoadError: the model had to be loaded again (the host restarted) and that failed.
            ModelOutOfMemoryError: out of memory, at predict or at that reload.
        """
        if not self.client.connected:
            # A new connection holds no lease: the host restarted (or this worker timed out on it).
            self.load()
        payload = body.encode("utf-8") if isinstance(body, str) else bytes(body or b"")
        request = {
            "op": "predict",
            "model": self.model_name,
            "content_type": content_type,
            "accept": accept,
            "has_body": body is not None,
        }
        answer = self.client.call(request, payload)
        if answer.status == 404:
            # Unknown on this connection (unloaded under us): lease it again, once.
            self.load()
            answer = self.client.call(request, payload)
        if answer.status == ModelOutOfMemoryError.status:
            raise ModelOutOfMemoryError(answer.message)
        return answer


_lease: _Lease | None = None


def _load(context: Any) -> _Lease:
    global _lease
    settings = ServingSettings.from_env()
    logging.getLogger("handler").setLevel(settings.log_level)
    model_dir = Path(context.system_properties["model_dir"])
    model_name = str(getattr(context, "model_name", model_dir.name))
    lease = _Lease(settings, model_name, model_dir)
    started = time.perf_counter()
    try:
        try:
            lease.load()
        except ModelHostUnavailableError as error:
            raise ModelLoadError(f"the model host is unavailable: {error}") from None
    except (ModelLoadError, ModelOutOfMemoryError) as error:
        reason = str(error)
        logger.error("cannot load model %s: %s", model_name, reason)
        too_large = isinstance(error, ModelTooLargeError)
        leave_load_error(load_error_file(settings.run_dir, model_name), reason, exceeds_total_memory=too_large)
        lease.client.close()
        raise
    reporter(settings).load(model_name, time.perf_counter() - started, ok=True)
    _lease = lease
    return lease


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[bytes] | None:
    """MMS's entry point: lease the model on the host on ``None``, else forward every request in ``data``.

    Raises:
        ModelLoadError: at load, when the host cannot load the model folder (MMS fails the load).
        MemoryError: when the model does not fit (MMS answers 507).
    """
    if data is None:
        _load(context)
        return None
    lease = _lease or _load(context)
    responses: list[bytes] = []
    for index, request in enumerate(data):
        headers = request_headers(context, index)
        payload = request_body(request)
        with reported_request(lease.settings, model_name=lease.model_name, headers=headers, body=payload) as answered:
            try:
                answer = lease.answer(payload, headers.get("content-type"), headers.get("accept"))
                status, body, message = answer.status, answer.payload, answer.message
                content_type = str(answer.fields.get("content_type", ""))
                answered.model_seconds = answer.fields.get("model_seconds")
                answered.batch_size = answer.fields.get("batch_size")
            except ModelHostUnavailableError as error:
                logger.error("request %d for %s failed: %s", index, lease.model_name, error)
                status, message = HOST_UNAVAILABLE_STATUS, f"the model host is unavailable, retry: {error}"
                body, content_type = encode_error(message), "application/json"
            except HandlerError as error:  # the reload after a host restart failed
                logger.error("request %d for %s failed: %s", index, lease.model_name, error.message)
                status, message = error.status, error.message
                body, content_type = encode_error(message), "application/json"
            if status != 200:
                context.set_response_status(status, reason_phrase(message), index)
                if not body:
                    body, content_type = encode_error(message), "application/json"
            context.set_response_content_type(index, content_type)
            answered.status, answered.response, answered.response_type = status, body, content_type
        # No response headers, on purpose: see handler/service.py.
        responses.append(body)
    return responses
