"""Captured records to their destination, in batches and in the background (docs/observability.md).

Records wait in a bounded buffer, grouped by model and hour; a group is written as one JSON Lines object under
``{destination}/{model}/{yyyy}/{mm}/{dd}/{hh}/`` once it holds ``batch_bytes`` or its oldest record has waited
``batch_seconds``. Adding a record never blocks: one that does not fit the buffer is dropped, counted and logged.
A write is tried ``write_attempts`` times (botocore's standard retry mode on S3, with backoff); an object that still
fails is dropped, counted and logged. :meth:`CaptureWriter.close` writes what is buffered within a deadline.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from handler.telemetry.names import capture_folder

logger = logging.getLogger(__name__)

#: Content type of a written object: JSON Lines.
JSON_LINES = "application/x-ndjson"
#: How often the writer looks for groups whose time is up.
TICK_SECONDS = 0.5


class CaptureSink(Protocol):
    """Where objects go. ``write`` raises on failure (after its own retries)."""

    def write(self, key: str, data: bytes) -> None: ...

    def describe(self, key: str) -> str: ...


class DirectorySink:
    """Objects as files under a folder (``mme serve --capture DIR``); each appears whole (written, then renamed)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, key: str, data: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_bytes(data)
        os.replace(partial, path)

    def describe(self, key: str) -> str:
        return str(self.root / key)


class S3Sink:
    """Objects in S3 under ``s3://bucket/prefix``, with SSE-KMS under ``kms_key_id`` when one is given."""

    def __init__(self, bucket: str, prefix: str, *, attempts: int, kms_key_id: str = "") -> None:
        import boto3  # only a container that captures to S3 needs it loaded
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix
        self._extra: dict[str, str] = {}
        if kms_key_id:
            self._extra = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_id}
        config = Config(
            retries={"total_max_attempts": attempts, "mode": "standard"}, connect_timeout=5, read_timeout=30
        )
        self._client = boto3.client("s3", config=config)

    def write(self, key: str, data: bytes) -> None:
        self._client.put_object(
            Bucket=self.bucket, Key=self.prefix + key, Body=data, ContentType=JSON_LINES, **self._extra
        )

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"


def sink_for(destination: str, *, attempts: int, kms_key_id: str = "") -> CaptureSink:
    """The sink of ``MME_CAPTURE_DESTINATION``: ``s3://bucket/prefix`` or a local folder."""
    if destination.startswith("s3://"):
        bucket, _, prefix = destination.removeprefix("s3://").partition("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return S3Sink(bucket, prefix, attempts=attempts, kms_key_id=kms_key_id)
    return DirectorySink(Path(destination))


@dataclass
class _Group:
    folder: str
    started: float
    first_time: datetime
    lines: list[bytes] = field(default_factory=list)
    size: int = 0


@dataclass(frozen=True)
class CaptureCounts:
    """Records taken, written, and lost (not fitting the buffer, or in an object that could not be written)."""

    records: int = 0
    written: int = 0
    objects: int = 0
    dropped: int = 0
    failed: int = 0


class CaptureWriter:
    """Buffers records and writes them in batches from a thread of its own."""

    def __init__(
        self,
        sink: CaptureSink,
        *,
        batch_bytes: int,
        batch_seconds: float,
        buffer_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sink = sink
        self._batch_bytes = batch_bytes
        self._batch_seconds = batch_seconds
        self._buffer_bytes = buffer_bytes
        self._clock = clock
        self._lock = threading.Condition()
        self._groups: dict[tuple[str, str], _Group] = {}
        self._full: list[_Group] = []
        self._buffered = 0
        self._counts = CaptureCounts()
        self._closing = False
        self._writing: list[_Group] = []
        self._thread = threading.Thread(target=self._run, name="capture writer", daemon=True)
        self._thread.start()

    @property
    def counts(self) -> CaptureCounts:
        with self._lock:
            return self._counts

    def add(self, model: str, when: datetime, line: bytes) -> bool:
        """Buffer one record (a JSON line) of ``model`` received at ``when``; False if it was dropped."""
        with self._lock:
            if self._closing or self._buffered + len(line) > self._buffer_bytes:
                self._count(records=1, dropped=1)
                dropped = self._counts.dropped
                if dropped == 1 or dropped % 1000 == 0:
                    why = "capture is closing" if self._closing else "the destination is slow or failing"
                    logger.error("capture: %d records dropped so far: %s", dropped, why)
                return False
            folder = capture_folder(model, when)
            group = self._groups.get((model, folder))
            if group is None:
                group = self._groups[(model, folder)] = _Group(folder, self._clock(), when)
            group.lines.append(line)
            group.size += len(line)
            self._buffered += len(line)
            self._count(records=1)
            if group.size >= self._batch_bytes:
                # Full: sealed, so the model's next record starts the next object.
                self._full.append(self._groups.pop((model, folder)))
                self._lock.notify()
        return True

    def _count(self, **increments: int) -> None:
        counts = self._counts
        self._counts = CaptureCounts(**{name: getattr(counts, name) + increments.get(name, 0) for name in vars(counts)})

    def _due(self, *, everything: bool) -> list[_Group]:
        now = self._clock()
        due = [key for key, group in self._groups.items() if everything or now - group.started >= self._batch_seconds]
        groups = [*self._full, *(self._groups.pop(key) for key in due)]
        self._full = []
        self._writing.extend(groups)
        return groups

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._closing:
                    self._lock.wait(TICK_SECONDS)
                groups = self._due(everything=self._closing)
                if self._closing and not groups and not self._groups and not self._full:
                    return
            for group in groups:
                self._write(group)

    def _write(self, group: _Group) -> None:
        key = f"{group.folder}{group.first_time.astimezone(UTC):%Y%m%dT%H%M%S}Z-{uuid.uuid4().hex[:12]}.jsonl"
        data = b"".join(group.lines)
        try:
            self.sink.write(key, data)
        except Exception as error:  # any sink failure: the records are counted and logged, never silently lost
            with self._lock:
                self._release(group)
                self._count(failed=len(group.lines))
            logger.error(
                "capture: %d records could not be written to %s and are lost: %s: %s",
                len(group.lines), self.sink.describe(key), type(error).__name__, error,
            )  # fmt: skip
            return
        with self._lock:
            self._release(group)
            self._count(written=len(group.lines), objects=1)
        logger.debug("capture: wrote %d records to %s", len(group.lines), self.sink.describe(key))

    def _release(self, group: _Group) -> None:
        self._buffered -= group.size
        self._writing.remove(group)

    def close(self, timeout: float) -> CaptureCounts:
        """Take no more records and write everything buffered, for at most ``timeout`` seconds; what is still
        unwritten then is counted as failed and logged."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        self._thread.join(timeout)
        with self._lock:
            left = [*self._groups.values(), *self._full, *self._writing]
            lost = sum(len(group.lines) for group in left)
            if lost:
                self._count(failed=lost)
            counts = self._counts
        if lost:
            logger.error("capture: %d records were not written within %.0f s of stopping and are lost", lost, timeout)
        return counts

    def describe(self) -> dict[str, Any]:
        counts = self.counts
        return {name: getattr(counts, name) for name in vars(counts)}
