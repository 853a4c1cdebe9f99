"""SageMaker Runtime's error shapes, so botocore raises the same exception classes locally as on AWS."""

from __future__ import annotations

import json


class SageMakerError(Exception):
    """An ``InvokeEndpoint`` error: its code (the botocore exception name), HTTP status and modelled fields."""

    code = "InternalFailure"
    status = 500

    def __init__(self, message: str, **fields: object) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields

    def body(self) -> bytes:
        """The JSON body botocore's rest-json parser reads (``__type`` gives the class, ``message`` the text)."""
        shape = {"__type": self.code, "message": self.message, "Message": self.message, **self.fields}
        if not self.code:
            del shape["__type"]
        return json.dumps(shape).encode()


class ValidationError(SageMakerError):
    """400: the request names no model, an unknown model or endpoint, or is malformed."""

    code = "ValidationError"
    status = 400


class PayloadTooLargeError(SageMakerError):
    """413: the body is above the endpoint's payload limit. SageMaker's front end answers this without an error type,
    so botocore raises a plain ``ClientError`` whose code is ``"413"``, as on AWS."""

    code = ""
    status = 413


class ModelError(SageMakerError):
    """424: the container answered 4xx/5xx; ``OriginalStatusCode`` and ``OriginalMessage`` carry its answer."""

    code = "ModelError"
    status = 424

    def __init__(self, message: str, *, original_status: int, original_message: str) -> None:
        super().__init__(message, OriginalStatusCode=original_status, OriginalMessage=original_message)
        self.original_status = original_status


class RequestTimeoutError(SageMakerError):
    """408: the request's body did not arrive in time (a stalled or truncated upload); sending it again may work."""

    code = "RequestTimeout"
    status = 408


class ModelNotReadyError(SageMakerError):
    """429: the model is still downloading or loading; try again."""

    code = "ModelNotReadyException"
    status = 429


class ServiceUnavailableError(SageMakerError):
    """503: the container is down or restarting, or the model cache's disk is full or cannot be written: the request
    itself was fine and may succeed later (botocore retries a 503), unlike a 400 (fix the request) or a 424 (the
    model failed)."""

    code = "ServiceUnavailable"
    status = 503


class InternalFailureError(SageMakerError):
    """500: a fault of the local endpoint itself."""

    code = "InternalFailure"
    status = 500
