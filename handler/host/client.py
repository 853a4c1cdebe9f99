"""Talking to the model host from another process (MMS's thin workers, ``serve``'s readiness check, tests).

No TensorFlow and no transformers here: a thin worker imports this and stays small.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from pathlib import Path
from typing import Any

from handler.host.protocol import ConnectionClosedError, Message, ProtocolError, receive_message, send_message

#: How often a client retries while the host's socket is not there yet (the host is starting or restarting).
_CONNECT_RETRY_SECONDS = 0.1


class ModelHostUnavailableError(ConnectionError):
    """The model host could not be reached in time, or the connection broke or timed out during a call.

    After it, the client is disconnected: its leases are gone with the connection.
    """


class ModelHostClient:
    """One connection to the model host; the models it loads are leased for the connection's lifetime.

    Not thread-safe: one MMS worker serves one request at a time, and each caller of several threads uses its own.
    """

    def __init__(self, socket_path: Path, *, connect_timeout: float, call_timeout: float) -> None:
        self.socket_path = socket_path
        self._connect_timeout = connect_timeout
        self._call_timeout = call_timeout
        self._sock: socket.socket | None = None

    @property
    def connected(self) -> bool:
        """Whether the connection is open and the host has not closed its end.

        An idle connection has nothing to read; a readable one holds the host's end of file (it exited), so a
        request is never sent into a connection that is already dead.
        """
        if self._sock is None:
            return False
        readable, _, _ = select.select([self._sock], [], [], 0)
        if readable:
            self.close()
            return False
        return True

    def connect(self) -> None:
        """Connect, waiting up to the connect timeout for the host to listen (it may be restarting).

        Raises:
            ModelHostUnavailableError: the host did not accept a connection in time.
        """
        self.close()
        deadline = time.monotonic() + self._connect_timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self._connect_timeout)
            try:
                sock.connect(str(self.socket_path))
            except (FileNotFoundError, ConnectionRefusedError) as error:
                sock.close()
                if time.monotonic() >= deadline:
                    raise ModelHostUnavailableError(
                        f"the model host did not accept a connection on {self.socket_path} within "
                        f"{self._connect_timeout:.0f} s ({error.strerror})"
                    ) from None
                time.sleep(_CONNECT_RETRY_SECONDS)
                continue
            except OSError as error:
                sock.close()
                raise ModelHostUnavailableError(f"cannot connect to the model host: {error}") from None
            sock.settimeout(self._call_timeout)
            self._sock = sock
            return

    def call(self, fields: dict[str, Any], payload: bytes = b"") -> Message:
        """Send one request and wait for its answer (connecting first if needed).

        Raises:
            ModelHostUnavailableError: the host is unreachable, closed the connection (it died or restarted), or
                did not answer within the call timeout; the client is then disconnected.
        """
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        try:
            send_message(self._sock, fields, payload)
            return receive_message(self._sock)
        except TimeoutError:
            self.close()
            raise ModelHostUnavailableError(
                f"the model host did not answer {fields.get('op')!r} within {self._call_timeout:.0f} s"
            ) from None
        except (OSError, ConnectionClosedError, ProtocolError) as error:
            self.close()
            raise ModelHostUnavailableError(f"the connection to the model host broke: {error}") from None

    def close(self) -> None:
        """Close the connection (ending its leases); harmless when closed."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> ModelHostClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
