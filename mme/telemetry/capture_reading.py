"""Read captured requests back: one model's records in a time window, from S3 or a local folder, in time order.

The container writes JSON Lines objects (``.jsonl``, or gzip-compressed ``.jsonl.gz``) under
``{destination}/{model}/{yyyy}/{mm}/{dd}/{hh}/`` (`handler.telemetry.names.capture_folder`), each record in the
folder of its own hour; each line is one record with the fields of `RECORD_FIELDS`. Reading lists the hour folders
the window touches, reads every object there and keeps the records whose ``time`` falls in the window.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from handler.telemetry.names import RECORD_FIELDS, capture_folder, safe_model_path
from mme import MmeError
from mme.aws.model_prefix import ModelPrefix, s3_client, s3_errors

#: Object names the container writes; anything else in a capture folder is not read.
JSONL_SUFFIX = ".jsonl"
GZIP_JSONL_SUFFIX = ".jsonl.gz"
#: Export formats by file suffix.
EXPORT_SUFFIXES = (".jsonl", ".parquet")

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(?:[0-9]+[smhdw])+")
_DURATION_PART = re.compile(r"([0-9]+)([smhdw])")


class CaptureError(MmeError):
    """Capture cannot be read or written as asked; the message names the location, record or option at fault."""


class ModelNotCapturedError(CaptureError):
    """The destination holds no capture at all for the model (a misspelt name, or a model never invoked)."""


def parse_moment(text: str, *, now: datetime) -> datetime:
    """The moment `text` names: a duration before `now` (``90s``, ``30m``, ``1h``, ``2d``, ``1w``, or combined like
    ``1h30m``), ``now``, or an ISO 8601 timestamp (``2026-11-26T08:00:00Z``, ``2026-11-26``; UTC unless it gives an
    offset). The result is timezone-aware.

    Raises:
        CaptureError: `text` is none of these.
    """
    cleaned = text.strip().lower()
    if cleaned == "now":
        return now
    if _DURATION.fullmatch(cleaned):
        seconds = sum(int(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(cleaned))
        return now - timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CaptureError(
            f"{text!r} is not a time: give a duration ago like 30m, 1h or 2d, or an ISO 8601 timestamp like "
            "2026-11-26T08:00:00Z"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class CaptureWindow:
    """Records with ``since <= time < until`` (both timezone-aware)."""

    since: datetime
    until: datetime

    def __post_init__(self) -> None:
        if self.since >= self.until:
            raise CaptureError(
                f"the window is empty: since {self.since.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ} is not before until "
                f"{self.until.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"
            )

    def hours(self) -> list[datetime]:
        """The UTC hours whose folders hold the window's records: from `since`'s to that of the last moment before
        `until`."""
        hour = self.since.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        last = self.until.astimezone(UTC) - timedelta(microseconds=1)
        hours = []
        while hour <= last:
            hours.append(hour)
            hour += timedelta(hours=1)
        return hours

    def holds(self, moment: datetime) -> bool:
        return self.since <= moment < self.until

    def describe(self) -> str:
        """``2026-11-26T07:00:00Z .. 2026-11-26T08:00:00Z``."""
        return f"{self.since.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ} .. {self.until.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"


class CaptureLocation(Protocol):
    """Where the container wrote its capture: an S3 prefix or a local folder. Names are relative to it."""

    uri: str

    def object_names(self, folder: str) -> list[str]:
        """The names of the objects directly in `folder` (``model/yyyy/mm/dd/hh/``); [] when it does not exist."""
        ...

    def read(self, name: str) -> bytes:
        """The bytes of the object `name`."""
        ...

    def has_folder(self, folder: str) -> bool:
        """Whether anything is stored under `folder`."""
        ...

    def top_folders(self) -> list[str]:
        """The first segments of what is stored here (model names, or their first folder), sorted."""
        ...


class LocalCapture:
    """Capture in a folder on this machine (``mme serve --capture DIR``)."""

    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise CaptureError(f"the capture folder {root} does not exist")
        self.root = root
        self.uri = str(root)

    def object_names(self, folder: str) -> list[str]:
        directory = self.root / folder
        if not directory.is_dir():
            return []
        return sorted(f"{folder}{path.name}" for path in directory.iterdir() if path.is_file())

    def read(self, name: str) -> bytes:
        try:
            return (self.root / name).read_bytes()
        except OSError as error:
            raise CaptureError(f"cannot read {self.root / name}: {error.strerror}") from None

    def has_folder(self, folder: str) -> bool:
        directory = self.root / folder
        return directory.is_dir() and any(files for _, _, files in os.walk(directory))

    def top_folders(self) -> list[str]:
        return sorted(path.name for path in self.root.iterdir() if path.is_dir())


class S3Capture:
    """Capture under an S3 prefix (``s3://<model bucket>/capture/`` on a deployed stage)."""

    def __init__(self, s3: Any, location: ModelPrefix) -> None:
        self._s3 = s3
        self.location = location
        self.uri = location.uri()

    def _list(self, folder: str, **extra: Any) -> Iterable[dict[str, Any]]:
        paginator = self._s3.get_paginator("list_objects_v2")
        with s3_errors(self.location):
            yield from paginator.paginate(Bucket=self.location.bucket, Prefix=self.location.key(folder), **extra)

    def object_names(self, folder: str) -> list[str]:
        start = len(self.location.prefix)
        return sorted(
            str(item["Key"])[start:] for page in self._list(folder, Delimiter="/") for item in page.get("Contents", [])
        )

    def read(self, name: str) -> bytes:
        with s3_errors(self.location, name):
            answer = self._s3.get_object(Bucket=self.location.bucket, Key=self.location.key(name))
            return bytes(answer["Body"].read())

    def has_folder(self, folder: str) -> bool:
        page = next(iter(self._list(folder, MaxKeys=1)), {})
        return bool(page.get("Contents"))

    def top_folders(self) -> list[str]:
        start = len(self.location.prefix)
        return sorted(
            str(common["Prefix"])[start:].rstrip("/")
            for page in self._list("", Delimiter="/")
            for common in page.get("CommonPrefixes", [])
        )


def open_capture(location: str, *, session: Any = None) -> CaptureLocation:
    """The capture at `location`: ``s3://bucket/prefix/`` (read with the boto3 `session`) or a local folder.

    Raises:
        CaptureError: the folder does not exist, the URI names no bucket, or an S3 URI comes without a session.
    """
    if not location.startswith("s3://"):
        return LocalCapture(Path(location).expanduser())
    parsed = urlparse(location)
    if not parsed.netloc:
        raise CaptureError(f"{location!r} is not an s3://bucket/prefix/ URI")
    if session is None:
        raise CaptureError(f"reading {location} needs an AWS session")
    try:
        prefix = ModelPrefix.of(parsed.netloc, parsed.path.lstrip("/"))
    except ValueError as error:
        raise CaptureError(f"{location!r}: {error}") from None
    return S3Capture(s3_client(session), prefix)


def record_time(record: dict[str, Any]) -> datetime:
    """The record's ``time`` as an aware UTC datetime.

    Raises:
        ValueError: the record has no ``time``, or not an ISO 8601 one.
    """
    moment = datetime.fromisoformat(str(record["time"]))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def parse_object(name: str, data: bytes, *, where: str) -> list[tuple[datetime, dict[str, Any]]]:
    """The records of one capture object (decompressed when `name` ends in ``.jsonl.gz``), each with its time.

    Raises:
        CaptureError: the object is not gzip when it says so, or a line is not a JSON object with an ISO ``time``;
            the message names the object (`where`) and the line.
    """
    if name.endswith(GZIP_JSONL_SUFFIX):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as error:
            raise CaptureError(f"{where}: not a gzip file ({error})") from None
    records = []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise TypeError("not a JSON object")
            records.append((record_time(record), record))
        except (ValueError, TypeError, KeyError) as error:
            reason = f"no field {error}" if isinstance(error, KeyError) else str(error)
            raise CaptureError(f"{where}, line {number}: not a capture record ({reason})") from None
    return records


def read_capture(capture: CaptureLocation, model: str, window: CaptureWindow) -> list[dict[str, Any]]:
    """`model`'s records in `window`, in time order (ties by ``request_id``), as the container wrote them.

    Returns [] when the model has capture, but none in the window.

    Raises:
        ModelNotCapturedError: `capture` holds nothing at all for `model`; the message lists what it holds.
        CaptureError: an object cannot be read, or holds something that is not a capture record.
        BucketNotFoundError, AccessDeniedError, CredentialsError: S3 refused (see `mme.aws.model_prefix`).
    """
    kept: list[tuple[datetime, str, dict[str, Any]]] = []
    for hour in window.hours():
        for name in capture.object_names(capture_folder(model, hour)):
            if not name.endswith((JSONL_SUFFIX, GZIP_JSONL_SUFFIX)):
                continue
            where = f"{capture.uri.rstrip('/')}/{name}"
            for moment, record in parse_object(name, capture.read(name), where=where):
                if window.holds(moment):
                    kept.append((moment, str(record.get("request_id") or ""), record))
    if not kept and not capture.has_folder(safe_model_path(model) + "/"):
        held = capture.top_folders()
        listing = ", ".join(held[:20]) + (", ..." if len(held) > 20 else "") if held else "nothing"
        raise ModelNotCapturedError(
            f"no capture of model {model!r} under {capture.uri}: check --model (a TargetModel such as "
            f"sentiment.tar.gz); it holds: {listing}"
        )
    kept.sort(key=lambda item: (item[0], item[1]))
    return [record for _, _, record in kept]


def check_export(path: Path) -> None:
    """Refuse an export path before anything is read: its suffix must be one of `EXPORT_SUFFIXES`, and its folder
    must exist and be writable.

    Raises:
        CaptureError: naming the suffix or the folder at fault.
    """
    if path.suffix.lower() not in EXPORT_SUFFIXES:
        raise CaptureError(
            f"{path}: unknown suffix {path.suffix or '(none)'!r}; write .jsonl (JSON Lines) or .parquet (Parquet)"
        )
    if path.is_dir():
        raise CaptureError(f"cannot write {path}: it is a folder")
    folder = path.parent
    if not folder.is_dir():
        raise CaptureError(f"cannot write {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise CaptureError(f"cannot write {path}: the folder {folder} is not writable")


def record_line(record: dict[str, Any]) -> str:
    """One record as a JSON Lines line (no newline), its fields in the order they were read."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def write_records(records: list[dict[str, Any]], path: Path) -> None:
    """Write `records` to `path`: JSON Lines for ``.jsonl``, Parquet (columns `RECORD_FIELDS`, see
    `parquet_table`) for ``.parquet``. An empty list writes an empty file (Parquet: the columns, no rows).

    Raises:
        CaptureError: the suffix is unknown, or the file cannot be written (the OS's reason).
    """
    check_export(path)
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            pq.write_table(parquet_table(records), path)
        else:
            with path.open("w", encoding="utf-8") as out:
                for record in records:
                    out.write(record_line(record) + "\n")
    except OSError as error:
        raise CaptureError(f"cannot write {path}: {error.strerror or error}") from None


def parquet_table(records: list[dict[str, Any]]) -> Any:
    """`records` as a ``pyarrow.Table`` whose columns are `RECORD_FIELDS` in order: ``time`` a UTC timestamp (µs),
    ``status`` int32, ``latency_ms`` and ``model_latency_ms`` float64, ``truncated`` bool, the rest strings (a field
    that is not a string, such as structured custom attributes, as its JSON text). Missing fields are null; fields
    beyond `RECORD_FIELDS` are left out.

    Raises:
        CaptureError: a value does not fit its column (a ``status`` that is not a number, say), naming the record.
    """
    import pyarrow as pa

    types = {
        "time": pa.timestamp("us", tz="UTC"),
        "status": pa.int32(),
        "latency_ms": pa.float64(),
        "model_latency_ms": pa.float64(),
        "truncated": pa.bool_(),
    }
    schema = pa.schema([pa.field(name, types.get(name, pa.string())) for name in RECORD_FIELDS])

    def cell(name: str, record: dict[str, Any]) -> Any:
        value = record.get(name)
        if value is None:
            return None
        if name == "time":
            return record_time(record)
        if name == "status":
            return int(value)
        if name in ("latency_ms", "model_latency_ms"):
            return float(value)
        if name == "truncated":
            return bool(value)
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    columns: dict[str, list[Any]] = {name: [] for name in RECORD_FIELDS}
    for record in records:
        for name, column in columns.items():
            try:
                column.append(cell(name, record))
            except (ValueError, TypeError):
                raise CaptureError(
                    f"record {record.get('request_id')!r} of {record.get('time')}: {name} {record[name]!r} does not "
                    f"fit the Parquet column ({schema.field(name).type})"
                ) from None
    return pa.Table.from_pydict(columns, schema=schema)
