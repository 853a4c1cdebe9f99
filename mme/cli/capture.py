"""``mme capture``: read back the requests the container captured, from a deployed stage or a local folder."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from mme.aws.stage import DEFAULT_CAPTURE_PREFIX
from mme.cli import MmeTyper, app
from mme.cli.output import fail
from mme.cli.stage_options import OwnerOption, RegionOption, aws_session, deployed_stage
from mme.telemetry.capture_reading import (
    CaptureError,
    CaptureLocation,
    CaptureWindow,
    check_export,
    open_capture,
    parse_moment,
    read_capture,
    record_line,
    write_records,
)

capture_app = MmeTyper(no_args_is_help=True, help="Read the requests the container captured (JSON Lines).")
app.add_typer(capture_app, name="capture")


def _moment(option: str, text: str, now: datetime) -> datetime:
    try:
        return parse_moment(text, now=now)
    except CaptureError as error:
        raise fail(f"{option}: {error}") from None


def _capture(*, stage: str, owner: str, source: str | None, prefix: str | None, region: str | None) -> CaptureLocation:
    """The capture named by ``--stage [--owner] [--prefix]`` (the stage's published capture prefix unless ``--prefix``
    names another) or ``--source``."""
    if bool(stage) == (source is not None):
        raise fail(
            "give either --stage (a deployed stage's capture) or --source (a folder or s3://bucket/prefix/), "
            "to say which capture to read"
        )
    if prefix is not None and not stage:
        raise fail("--prefix goes with --stage; with --source, put the prefix in the s3:// URI")
    if stage:
        session = aws_session(region)
        deployed = deployed_stage(session, stage, owner)
        return open_capture(f"s3://{deployed.bucket}/{prefix or deployed.capture_prefix}", session=session)
    assert source is not None
    return open_capture(source, session=aws_session(region) if source.startswith("s3://") else None)


@capture_app.command("read")
def read(
    model: Annotated[str, typer.Option("--model", help="TargetModel whose requests to read, e.g. sentiment.tar.gz.")],
    since: Annotated[
        str,
        typer.Option(help="Start of the window: a duration ago (30m, 1h, 2d, 1h30m) or an ISO 8601 time (UTC)."),
    ] = "1h",
    until: Annotated[str, typer.Option(help="End of the window (excluded), like --since.")] = "now",
    stage: Annotated[str, typer.Option("--stage", help="Read this deployed stage's capture, e.g. dev.")] = "",
    owner: OwnerOption = "",
    prefix: Annotated[
        str | None,
        typer.Option(
            help="With --stage: read under this prefix of the model bucket instead of the one the stage publishes "
            f"(its capture_prefix setting, SSM <ssm_prefix>/capture-prefix; {DEFAULT_CAPTURE_PREFIX} for a store "
            "deployed before that parameter)."
        ),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(help="Instead of --stage: a capture folder (`mme serve --capture DIR`) or s3://bucket/prefix/."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the records to FILE, .jsonl or .parquet, instead of stdout."),
    ] = None,
    region: RegionOption = None,
) -> None:
    """Print one model's captured requests in a time window as JSON Lines, oldest first (or write them to a .jsonl or
    .parquet file)."""
    now = datetime.now(UTC)
    window = CaptureWindow(_moment("--since", since, now), _moment("--until", until, now))
    if output is not None:
        check_export(output)
    capture = _capture(stage=stage, owner=owner, source=source, prefix=prefix, region=region)
    records = read_capture(capture, model, window)
    if output is not None:
        write_records(records, output)
        typer.echo(f"wrote {len(records)} record(s) of {model} ({window.describe()}) to {output}", err=True)
        return
    for record in records:
        typer.echo(record_line(record))
    if not records:
        typer.echo(f"no records of {model} in {window.describe()} under {capture.uri}", err=True)
