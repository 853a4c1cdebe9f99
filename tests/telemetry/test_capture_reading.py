"""Reading capture back (mme/telemetry/capture_reading.py): the window's hour folders, time filtering and order,
gzip, Parquet columns, and what is refused, over a local folder written as the container writes it."""

from __future__ import annotations

import gzip
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from capture_objects import (
    SENTIMENT,
    START,
    TOPIC,
    capture_object,
    capture_record,
    three_hours_of_two_models,
    write_local,
)

from handler.telemetry.names import RECORD_FIELDS
from mme.telemetry.capture_reading import (
    CaptureError,
    CaptureWindow,
    LocalCapture,
    ModelNotCapturedError,
    open_capture,
    parse_moment,
    read_capture,
    record_time,
    write_records,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


@pytest.fixture
def capture(tmp_path: Path) -> tuple[LocalCapture, dict[str, dict]]:
    objects, records = three_hours_of_two_models()
    for name, data in objects:
        write_local(tmp_path / "capture", name, data)
    # Not an object the container writes: never read.
    write_local(tmp_path / "capture", f"{SENTIMENT}/2026/11/26/07/notes.txt", b"not json")
    return LocalCapture(tmp_path / "capture"), records


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", NOW - timedelta(minutes=30)),
        ("1h", NOW - timedelta(hours=1)),
        ("2d", NOW - timedelta(days=2)),
        ("90s", NOW - timedelta(seconds=90)),
        ("1w", NOW - timedelta(weeks=1)),
        ("1h30m", NOW - timedelta(minutes=90)),
        ("now", NOW),
        ("2026-11-26T08:00:00Z", datetime(2026, 11, 26, 8, tzinfo=UTC)),
        ("2026-11-26T08:00:00", datetime(2026, 11, 26, 8, tzinfo=UTC)),
        ("2026-11-26", datetime(2026, 11, 26, tzinfo=UTC)),
        ("2026-11-26T09:00:00+01:00", datetime(2026, 11, 26, 9, tzinfo=timezone(timedelta(hours=1)))),
    ],
)
def test_a_moment_is_a_duration_ago_or_an_iso_timestamp_in_utc_by_default(text: str, expected: datetime) -> None:
    moment = parse_moment(text, now=NOW)
    assert moment == expected
    assert moment.tzinfo is not None


@pytest.mark.parametrize("text", ["yesterday", "1y", "-1h", "h", "2026-13-01", ""])
def test_a_moment_that_is_neither_says_what_is_accepted(text: str) -> None:
    with pytest.raises(CaptureError, match="give a duration ago like 30m, 1h or 2d, or an ISO 8601 timestamp"):
        parse_moment(text, now=NOW)


def test_the_window_reads_the_folders_of_the_hours_it_touches() -> None:
    window = CaptureWindow(START.replace(hour=7, minute=20), START.replace(hour=9))
    assert window.hours() == [START.replace(hour=hour) for hour in (7, 8)]
    assert CaptureWindow(START, START.replace(minute=1)).hours() == [START]
    with pytest.raises(CaptureError, match="the window is empty"):
        CaptureWindow(START, START)


def test_records_in_the_window_come_back_in_time_order_from_every_object_plain_or_gzip(
    capture: tuple[LocalCapture, dict[str, dict]],
) -> None:
    location, records = capture
    window = CaptureWindow(START.replace(hour=7), START.replace(hour=8))

    read = read_capture(location, SENTIMENT, window)

    # s4 and s5 follow s7 in their object, s6 is in another (gzip) of the same hour; s9 at 08:00 is past the end.
    assert read == [records[name] for name in ("s4", "s5", "s6", "s7", "s8")]
    assert read_capture(location, TOPIC, window) == [records["t1"]]


def test_a_wider_window_reads_every_record_of_the_model_once(capture: tuple[LocalCapture, dict[str, dict]]) -> None:
    location, records = capture
    read = read_capture(location, SENTIMENT, CaptureWindow(START - timedelta(days=1), START + timedelta(days=1)))
    assert read == [records[f"s{number}"] for number in range(1, 11)]


def test_a_captured_model_with_nothing_in_the_window_reads_empty(capture: tuple[LocalCapture, dict[str, dict]]) -> None:
    location, _ = capture
    assert read_capture(location, TOPIC, CaptureWindow(START.replace(hour=8), START.replace(hour=9))) == []


def test_a_model_without_capture_is_refused_with_what_the_destination_holds(
    capture: tuple[LocalCapture, dict[str, dict]],
) -> None:
    location, _ = capture
    with pytest.raises(ModelNotCapturedError) as refused:
        read_capture(location, "sentimnet.tar.gz", CaptureWindow(START, START.replace(hour=9)))
    assert "no capture of model 'sentimnet.tar.gz'" in str(refused.value)
    assert "it holds: sentiment.tar.gz, team-a" in str(refused.value)


def test_a_line_that_is_not_a_record_names_its_object_and_line(tmp_path: Path) -> None:
    name, data = capture_object([capture_record(SENTIMENT, START)], compressed=True)
    write_local(tmp_path, name, gzip.compress(gzip.decompress(data) + b'{"model": "no time"}\n'))
    with pytest.raises(CaptureError, match=rf"{name}, line 2: not a capture record \(no field 'time'\)"):
        read_capture(LocalCapture(tmp_path), SENTIMENT, CaptureWindow(START, START.replace(hour=7)))

    write_local(tmp_path, name, b"not gzip")
    with pytest.raises(CaptureError, match=rf"{name}: not a gzip file"):
        read_capture(LocalCapture(tmp_path), SENTIMENT, CaptureWindow(START, START.replace(hour=7)))


def test_a_missing_folder_or_bucketless_uri_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match=r"the capture folder .*/nowhere does not exist"):
        open_capture(str(tmp_path / "nowhere"))
    with pytest.raises(CaptureError, match="is not an s3://bucket/prefix/ URI"):
        open_capture("s3:///capture/", session=object())


def test_parquet_holds_every_record_field_with_its_type(
    capture: tuple[LocalCapture, dict[str, dict]], tmp_path: Path
) -> None:
    location, _ = capture
    read = read_capture(location, SENTIMENT, CaptureWindow(START, START.replace(hour=9)))
    path = tmp_path / "sentiment.parquet"

    write_records(read, path)

    table = pq.read_table(path)
    assert table.column_names == list(RECORD_FIELDS)
    assert table.schema.field("time").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("status").type == pa.int32()
    assert table.schema.field("latency_ms").type == pa.float64()
    assert table.schema.field("model_latency_ms").type == pa.float64()
    assert table.schema.field("truncated").type == pa.bool_()
    assert table.schema.field("inputs").type == pa.string()
    rows = table.to_pylist()
    assert len(rows) == len(read) == 10
    for row, record in zip(rows, read, strict=True):
        for field in RECORD_FIELDS:
            expected = record_time(record) if field == "time" else record[field]
            assert row[field] == expected, (field, record["request_id"])


def test_an_empty_parquet_export_still_has_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "none.parquet"
    write_records([], path)
    table = pq.read_table(path)
    assert table.num_rows == 0
    assert table.column_names == list(RECORD_FIELDS)


def test_a_value_that_does_not_fit_its_parquet_column_names_the_record(tmp_path: Path) -> None:
    record = capture_record(SENTIMENT, START, request_id="r-1")
    record["status"] = "teapot"
    with pytest.raises(CaptureError, match=r"record 'r-1' .*: status 'teapot' does not fit the Parquet column"):
        write_records([record], tmp_path / "bad.parquet")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("records.csv", re.escape("unknown suffix '.csv'; write .jsonl (JSON Lines) or .parquet (Parquet)")),
        ("records", re.escape("unknown suffix '(none)'")),
        ("missing/records.jsonl", "the folder .*/missing does not exist"),
    ],
)
def test_an_export_path_that_cannot_be_written_is_refused(tmp_path: Path, name: str, message: str) -> None:
    with pytest.raises(CaptureError, match=message):
        write_records([], tmp_path / name)
