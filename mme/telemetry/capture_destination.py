"""Where ``mme serve --capture`` sends the container's captured requests (docs/observability.md)."""

from __future__ import annotations

from pathlib import Path

from mme.cache_storage import probe_writable
from mme.telemetry.capture_reading import CaptureError


def capture_destination(capture: str) -> str:
    """``mme serve --capture``'s value as the container's ``MME_CAPTURE_DESTINATION``: an ``s3://bucket/prefix/`` URL
    as given, or a folder made absolute, created and checked writable.

    Raises:
        CaptureError: it is neither, or the folder cannot be written.
    """
    if capture.startswith("s3://"):
        if not capture.removeprefix("s3://").partition("/")[0]:
            raise CaptureError(f"--capture {capture}: name a bucket, e.g. s3://my-bucket/capture/")
        return capture
    if "://" in capture:
        raise CaptureError(f"--capture {capture}: give a folder or an s3://bucket/prefix/ URL")
    folder = Path(capture).expanduser().resolve()
    try:
        probe_writable(folder)
    except OSError as error:
        raise CaptureError(f"--capture {capture}: cannot write there ({error.strerror or error})") from None
    return str(folder)
