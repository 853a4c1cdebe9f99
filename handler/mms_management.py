"""Calls to MMS's management API from inside the container (``serve``'s worker scaler)."""

from __future__ import annotations

import http.client

from handler.settings import ServingSettings

#: Every call is on loopback to a process in this container; a slower answer means MMS is stuck, not busy.
MMS_CALL_TIMEOUT_SECONDS = 10.0


def mms_address(settings: ServingSettings) -> str:
    """The address to reach MMS on from inside the container (loopback when it listens on every address)."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(settings.bind_host, settings.bind_host)  # noqa: S104


def mms_call(settings: ServingSettings, method: str, path: str) -> tuple[int | str, str]:
    """(status, body) of one management call, or (why, "") when MMS cannot be reached."""
    connection = http.client.HTTPConnection(mms_address(settings), settings.port, timeout=MMS_CALL_TIMEOUT_SECONDS)
    try:
        connection.request(method, path)
        answer = connection.getresponse()
        return answer.status, answer.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as error:
        return f"unreachable ({type(error).__name__}: {error})", ""
    finally:
        connection.close()
