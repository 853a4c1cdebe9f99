"""Errors that carry their HTTP status: the status code is the multi-model container's protocol."""

from __future__ import annotations


class HandlerError(Exception):
    """A request or model problem with the HTTP status the client should see.

    The message is returned to the client as ``{"error": message}``, so it must say what to fix.
    """

    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequestError(HandlerError):
    """The request body is malformed or asks for something the model cannot do (400)."""

    status = 400


class NotAcceptableError(HandlerError):
    """The ``Accept`` header names a format the handler cannot produce (406)."""

    status = 406


class UnsupportedContentTypeError(HandlerError):
    """The ``Content-Type`` is not one the handler reads (415)."""

    status = 415


class ModelLoadError(HandlerError):
    """A model folder is not a servable archive; the message says what is missing."""

    status = 500


class ModelOutOfMemoryError(MemoryError):
    """The model does not fit in memory. A ``MemoryError``, because MMS answers exactly that with 507."""

    status = 507


class ModelTooLargeError(ModelOutOfMemoryError):
    """The model needs more than all the memory the container can have: unloading other models cannot make it fit.
    Still a 507 for MMS; the handler's load-error file says so to the front end (:mod:`handler.service`)."""
