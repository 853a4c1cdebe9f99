"""Capture objects as the container writes them (handler/telemetry/names.py), for the tests that read them back.

An object is JSON Lines (gzip-compressed when its name ends in ``.jsonl.gz``) named
``{yyyymmddThhmmss}Z-<random>.jsonl`` after its first record, in the hour folder of that record:
``{model}/{yyyy}/{mm}/{dd}/{hh}/``. Records after the first may belong to later hours (an object is written over a
while).
"""

from __future__ import annotations

import gzip
import json
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from handler.telemetry.names import RECORD_FIELDS, UTF8, capture_folder


def capture_record(model: str, when: datetime, *, status: int = 200, **fields: Any) -> dict[str, Any]:
    """A record of every field of `RECORD_FIELDS`, in their order, answered with `status`; `fields` override."""
    failed = status >= 400
    record = {
        "time": when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "request_id": secrets.token_hex(8),
        "model": model,
        "content_type": "application/json",
        "accept": "application/json",
        "inputs": json.dumps({"input_text": f"what a day at {when:%H:%M:%S}, très bien"}, ensure_ascii=False),
        "inputs_encoding": UTF8,
        "outputs": json.dumps({"error": "bad input"}) if failed else json.dumps({"label": "positive"}),
        "outputs_encoding": UTF8,
        "output_content_type": "application/json",
        "status": status,
        "latency_ms": 12.5,
        "model_latency_ms": None if failed else 9.25,
        "custom_attributes": None,
        "truncated": False,
    }
    record.update(fields)
    assert tuple(record) == RECORD_FIELDS
    return record


def capture_object(records: list[dict[str, Any]], *, compressed: bool = False) -> tuple[str, bytes]:
    """The name (relative to the destination) and bytes of one object holding `records` in the order given."""
    first = datetime.fromisoformat(records[0]["time"])
    suffix = ".jsonl.gz" if compressed else ".jsonl"
    name = f"{capture_folder(records[0]['model'], first)}{first:%Y%m%dT%H%M%S}Z-{secrets.token_hex(4)}{suffix}"
    data = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode()
    return name, gzip.compress(data) if compressed else data


def write_local(root: Path, name: str, data: bytes) -> Path:
    """Put one object in a local capture folder."""
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


#: The hour the scenario below starts.
START = datetime(2026, 11, 26, 6, 0, tzinfo=UTC)
SENTIMENT = "sentiment.tar.gz"
TOPIC = "team-a/topic.tar.gz"


def three_hours_of_two_models() -> tuple[list[tuple[str, bytes]], dict[str, dict[str, Any]]]:
    """Objects of two models from 06:00 to 08:30 on 2026-11-26 (plain and gzip, two in one hour, one with its
    records out of order, one holding a request that failed), and every record by a name: ``s1``..``s10`` for
    sentiment.tar.gz in time order, ``t1`` for team-a/topic.tar.gz."""

    def at(hour: int, minute: int, second: int = 0, microsecond: int = 0) -> datetime:
        return START.replace(hour=hour, minute=minute, second=second, microsecond=microsecond)

    s = {
        "s1": capture_record(SENTIMENT, at(6, 10)),
        "s2": capture_record(SENTIMENT, at(6, 50), custom_attributes="trace=1"),
        "s3": capture_record(SENTIMENT, at(6, 59, 30)),
        "s4": capture_record(SENTIMENT, at(7, 0, 20), outputs=None, outputs_encoding=None),
        "s5": capture_record(SENTIMENT, at(7, 5), status=400),
        "s6": capture_record(SENTIMENT, at(7, 10), inputs="AAEC/w==", inputs_encoding="base64", truncated=True),
        "s7": capture_record(SENTIMENT, at(7, 30)),
        "s8": capture_record(SENTIMENT, at(7, 59, 59, 999999)),
        "s9": capture_record(SENTIMENT, at(8, 0)),
        "s10": capture_record(SENTIMENT, at(8, 30)),
        "t1": capture_record(TOPIC, at(7, 15)),
    }
    objects = [
        capture_object([s["s1"], s["s2"]]),
        capture_object([s["s3"]], compressed=True),
        capture_object([s["s7"], s["s4"], s["s5"]]),
        capture_object([s["s6"], s["s8"]], compressed=True),
        capture_object([s["s9"], s["s10"]]),
        capture_object([s["t1"]]),
    ]
    return objects, s
