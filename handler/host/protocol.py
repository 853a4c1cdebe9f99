"""The model host's wire protocol: length-prefixed frames on a Unix stream socket.

A frame is ``>IQ`` (header length, payload length), a UTF-8 JSON header, then the payload's raw bytes. The header
carries the operation and small fields; the payload carries request and response bodies untouched, so a 6 MB body
costs no base64 and no pickling (nothing received is ever unpickled). Every socket call of a peer runs under the
socket's timeout, which ``multiprocessing.connection`` cannot give (its connect, handshake and send block without
one); this is why the framing is ours, and why it is this small.

Requests and their answers (every answer has ``status``, an HTTP status; errors add ``message``):

- ``{"op": "load", "model": NAME, "model_dir": DIR}``: 200 once loaded (or already loaded from DIR), 500 the
  folder is not servable, 507 out of memory. The load is a lease held by the connection: when the connection
  closes (the worker exited or was killed), the lease ends, and the model is unloaded when no lease is left.
- ``{"op": "predict", "model": NAME, "content_type": ..., "accept": ..., "has_body": bool}`` + the request body:
  200 with ``content_type``, ``model_seconds`` (the model call's time) and ``batch_size`` (the texts that call
  held) + the response body; 400/406/415 bad input, 404 not loaded on this connection, 507 out
  of memory, 503 the host failed on this request.
- ``{"op": "unload", "model": NAME}``: ends this connection's lease; 200, or 404 if it held none.
- ``{"op": "status"}``: 200 with ``pid`` and ``models`` (name -> ``{"model_dir", "leases"}``).
"""

from __future__ import annotations

import json
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

_FRAME = struct.Struct(">IQ")
#: Headers are a few small fields; anything larger is not a peer speaking this protocol.
MAX_HEADER_BYTES = 1024 * 1024
#: Bodies are bounded by MMS's payload limit (6 MB by default); this only refuses garbage lengths.
MAX_PAYLOAD_BYTES = 1024 * 1024 * 1024


class ProtocolError(Exception):
    """The peer sent something that is not a frame of this protocol."""


class ConnectionClosedError(ConnectionError):
    """The peer closed the connection between frames (a clean end) or in the middle of one."""


@dataclass(frozen=True)
class Message:
    """One frame: its JSON header fields and its payload."""

    fields: dict[str, Any]
    payload: bytes = field(default=b"", repr=False)

    @property
    def status(self) -> int:
        return int(self.fields.get("status", 0))

    @property
    def message(self) -> str:
        return str(self.fields.get("message", ""))


def send_message(sock: socket.socket, fields: dict[str, Any], payload: bytes = b"") -> None:
    """Write one frame; raises ``OSError`` (``TimeoutError`` after the socket's timeout) if it cannot."""
    header = json.dumps(fields, ensure_ascii=True).encode("ascii")
    sock.sendall(_FRAME.pack(len(header), len(payload)) + header)
    if payload:
        sock.sendall(payload)


def _receive_exactly(sock: socket.socket, size: int, *, at_boundary: bool) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        count = sock.recv_into(view[received:], size - received)
        if count == 0:
            where = "between frames" if at_boundary and received == 0 else "in the middle of a frame"
            raise ConnectionClosedError(f"the peer closed the connection {where}")
        received += count
    return bytes(buffer)


def receive_message(sock: socket.socket) -> Message:
    """Read one frame.

    Raises:
        ConnectionClosedError: the peer closed the connection.
        ProtocolError: the frame is malformed.
        OSError: the socket failed (``TimeoutError`` after the socket's timeout).
    """
    header_size, payload_size = _FRAME.unpack(_receive_exactly(sock, _FRAME.size, at_boundary=True))
    if header_size > MAX_HEADER_BYTES or payload_size > MAX_PAYLOAD_BYTES:
        raise ProtocolError(f"frame of {header_size} + {payload_size} bytes is beyond this protocol's limits")
    header = _receive_exactly(sock, header_size, at_boundary=False)
    try:
        fields = json.loads(header)
    except ValueError as error:
        raise ProtocolError(f"frame header is not JSON: {error}") from None
    if not isinstance(fields, dict):
        raise ProtocolError("frame header is not a JSON object")
    payload = _receive_exactly(sock, payload_size, at_boundary=False) if payload_size else b""
    return Message(fields, payload)
