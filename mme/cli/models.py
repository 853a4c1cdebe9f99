"""Commands on model archives: package and inspect them; upload them to a stage's model store and list it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.filesize import decimal
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from handler.errors import HandlerError
from handler.manifest import Manifest, OutputKind, ResponseFormat
from mme.archive import ArchiveError
from mme.cli import app
from mme.cli.output import fail
from mme.cli.stage_options import OwnerOption, RegionOption, aws_session, deployed_stage

if TYPE_CHECKING:
    from mme.aws.model_prefix import ModelPrefix
    from mme.aws.stage import DeployedStage
    from mme.aws.upload import UploadStart
    from mme.packaging import ModelReport


def _bindings(pairs: list[str]) -> dict[str, str] | None:
    bindings = {}
    for pair in pairs:
        name, sep, output = pair.partition("=")
        if not sep or not name or not output:
            raise typer.BadParameter(
                f"{pair!r} must look like SIGNATURE_INPUT=TOKENIZER_OUTPUT, e.g. mask=attention_mask"
            )
        bindings[name] = output
    return bindings or None


@contextmanager
def _model_errors(action: str) -> Iterator[None]:
    """Turn every failure of reading a model into a CLI error of a few lines; ``-v`` logs the traceback."""
    try:
        yield
    except (ArchiveError, HandlerError) as error:
        raise fail(str(error)) from None
    except Exception as error:  # TensorFlow or transformers failing in a way the handler does not name
        logging.getLogger("mme").info("%s failed", action, exc_info=True)
        raise fail(f"{action} failed unexpectedly: {type(error).__name__}: {error} (-v shows where)") from None


def _print_report(report: ModelReport) -> None:
    for line in report.lines():
        typer.echo(line)


@app.command("package")
def package(
    output: Annotated[Path, typer.Option("--output", "-o", help="Archive to write: <model>.tar.gz (a new key).")],
    saved_model: Annotated[
        Path | None, typer.Option("--saved-model", help="Folder written by model.save or tf.saved_model.save.")
    ] = None,
    source: Annotated[
        Path | None,
        typer.Option("--from", help="An existing archive (.tar.gz) or extracted model folder to repackage."),
    ] = None,
    tokenizer: Annotated[
        Path | None, typer.Option("--tokenizer", help="Folder written by a tokenizer's save_pretrained.")
    ] = None,
    no_tokenizer: Annotated[
        bool, typer.Option("--no-tokenizer", help="Ship no tokenizer: the container's default tokenizer serves it.")
    ] = False,
    default_tokenizer: Annotated[
        Path | None,
        typer.Option(
            help="The container's default tokenizer, to test a --no-tokenizer archive (default: "
            "$MME_DEFAULT_TOKENIZER_DIR)."
        ),
    ] = None,
    labels: Annotated[
        str | None, typer.Option(help="mme.json labels: class names in output order, comma-separated.")
    ] = None,
    max_sequence_length: Annotated[
        int | None,
        typer.Option(min=2, help="mme.json max_sequence_length: tokens per text. Default: the signature's, else 128."),
    ] = None,
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            help="mme.json inputs: SIGNATURE_INPUT=TOKENIZER_OUTPUT (input_ids, attention_mask, token_type_ids); "
            "repeatable.",
        ),
    ] = None,
    output_name: Annotated[
        str | None,
        typer.Option(help="mme.json output_name: the signature output to read. Default: logits or the only one."),
    ] = None,
    output_kind: Annotated[
        OutputKind | None,
        typer.Option(help="mme.json output_kind. Default: probabilities when the graph ends in softmax/sigmoid."),
    ] = None,
    response_format: Annotated[
        ResponseFormat | None,
        typer.Option(help="mme.json response_format: raw answers the bare output row. Default: prediction."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
) -> None:
    """Build a model archive, validate it with the handler's own code (one test prediction), and report what the
    container will do with it. Fields given here are merged over the source's own mme.json."""
    from mme.packaging import package_model

    if (saved_model is None) == (source is None):
        raise fail("give exactly one of --saved-model (a SavedModel folder) and --from (an archive or model folder)")
    overrides = Manifest(
        labels=tuple(label.strip() for label in labels.split(",")) if labels is not None else None,
        max_sequence_length=max_sequence_length,
        inputs=_bindings(inputs or []),
        output_name=output_name,
        output_kind=output_kind,
        response_format=response_format,
    )
    with _model_errors("packaging"):
        Manifest.from_json(overrides.to_json())  # the same checks as mme.json, with the same messages
        report = package_model(
            source=saved_model or source,  # type: ignore[arg-type]
            output=output,
            tokenizer=tokenizer,
            no_tokenizer=no_tokenizer,
            default_tokenizer=default_tokenizer,
            overrides=overrides,
            overwrite=overwrite,
        )
    _print_report(report)
    typer.echo(f"wrote {output}: valid")


@app.command("inspect")
def inspect(
    path: Annotated[Path, typer.Argument(help="An archive (.tar.gz), a model folder, or a SavedModel folder.")],
    default_tokenizer: Annotated[
        Path | None,
        typer.Option(
            help="The container's default tokenizer, for archives that ship none (default: $MME_DEFAULT_TOKENIZER_DIR)."
        ),
    ] = None,
) -> None:
    """Report what the container will do with a model (inputs and bindings, length, output, labels, a test
    prediction) without writing anything."""
    from mme.packaging import inspect_model

    with _model_errors("inspecting"):
        report = inspect_model(path, default_tokenizer=default_tokenizer)
    _print_report(report)


# --- archives in a stage's model store: upload and list -------------------------------------------------------------

StageChoice = Annotated[
    str, typer.Option("--stage", help="Stage whose model store to use (from its SSM parameters), e.g. dev.")
]
BucketOption = Annotated[str | None, typer.Option("--bucket", help="Instead of --stage: the bucket; with --prefix.")]
PrefixOption = Annotated[
    str | None, typer.Option("--prefix", help="Instead of --stage: the model prefix in --bucket, e.g. models/.")
]


def _model_prefix(
    *, stage: str, owner: str, bucket: str | None, prefix: str | None, region: str | None
) -> tuple[Any, ModelPrefix, DeployedStage | None]:
    """The boto3 session and the model prefix named by ``--stage [--owner]`` or ``--bucket --prefix``."""
    from mme.aws.model_prefix import ModelPrefix

    by_bucket = [value for value in (bucket, prefix) if value is not None]
    if bool(stage) == bool(by_bucket) or len(by_bucket) == 1:
        raise fail(
            "give either --stage (with --owner for a direct deploy) or both --bucket and --prefix, to say which "
            "model store to use"
        )
    session = aws_session(region)
    if stage:
        deployed = deployed_stage(session, stage, owner)
        return session, ModelPrefix.of(deployed.bucket, deployed.model_prefix), deployed
    try:
        return session, ModelPrefix.of(str(bucket), str(prefix)), None
    except ValueError as error:
        raise fail(f"--bucket/--prefix: {error}") from None


class _ProgressBar:
    """`mme.aws.upload.UploadProgress` as a rich progress bar on stderr."""

    def __init__(self, progress: Progress, description: str) -> None:
        self._progress = progress
        self._description = description
        self._task: TaskID | None = None

    def started(self, start: UploadStart) -> None:
        if start.aborted_stale_upload:
            self._progress.console.print("an unfinished upload of another file to this key was aborted")
        if start.reused_parts:
            self._progress.console.print(
                f"resuming: {start.reused_parts} of {start.parts} parts ({decimal(start.reused_bytes)}) are in S3"
            )
        self._task = self._progress.add_task(self._description, total=start.total_bytes, completed=start.reused_bytes)

    def sent(self, size: int) -> None:
        assert self._task is not None
        self._progress.advance(self._task, size)


def _upload_progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )


@app.command("upload")
def upload(
    archive: Annotated[Path, typer.Argument(help="The model archive (<model>.tar.gz) to upload.")],
    key: Annotated[
        str | None,
        typer.Option(
            "--key",
            help="TargetModel: the key under the model prefix, NAME.tar.gz (default: the archive's file name). "
            "Keys are never overwritten: a new version gets a new key.",
        ),
    ] = None,
    stage: StageChoice = "",
    owner: OwnerOption = "",
    bucket: BucketOption = None,
    prefix: PrefixOption = None,
    region: RegionOption = None,
    default_tokenizer: Annotated[
        Path | None,
        typer.Option(
            help="The container's default tokenizer, to test archives that ship none (default: "
            "$MME_DEFAULT_TOKENIZER_DIR)."
        ),
    ] = None,
) -> None:
    """Validate a model archive with the handler (one test prediction, as `mme package`), then upload it under a new
    key of a stage's model prefix: never over an existing key, resumable, SHA-256 checked end to end."""
    from mme.aws.model_prefix import s3_client
    from mme.aws.upload import plan_upload, upload_archive
    from mme.packaging import inspect_model

    session, destination, deployed = _model_prefix(
        stage=stage, owner=owner, bucket=bucket, prefix=prefix, region=region
    )
    s3 = s3_client(session)
    plan = plan_upload(s3, archive, destination, key)
    with _model_errors("inspecting"):
        report = inspect_model(archive, default_tokenizer=default_tokenizer)
    _print_report(report)
    if report.prediction is None:
        raise fail(f"{archive} is not uploaded: it could not be tested: {report.no_prediction_reason}")
    try:
        with _upload_progress() as progress:
            result = upload_archive(s3, plan, _ProgressBar(progress, f"uploading {plan.target_model}"))
    except KeyboardInterrupt:
        typer.secho("interrupted: the parts already sent stay in S3; run the same command again to resume", err=True)
        raise typer.Exit(code=130) from None
    parts = f"{result.parts} parts, {result.reused_parts} resumed" if result.parts > 1 else "1 part"
    typer.echo(f"uploaded {result.uri} ({decimal(result.size)}, {parts}); SHA-256 {result.sha256} verified")
    typer.echo(f"TargetModel: {result.target_model}")
    endpoint = deployed.endpoint_name if deployed is not None and deployed.endpoint_name else "ENDPOINT_NAME"
    typer.echo(
        f"invoke it:   mme invoke --endpoint {endpoint} --model {result.target_model} --text 'a short sentence' "
        f"--region {session.region_name}"
    )


def _table(rows: list[tuple[str, ...]], *, right: frozenset[int] = frozenset()) -> list[str]:
    """Rows as aligned columns (two spaces apart); the columns numbered in `right` are right-aligned."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return [
        "  ".join(
            cell.rjust(width) if column in right else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


@app.command("models")
def list_models(
    stage: StageChoice = "",
    owner: OwnerOption = "",
    bucket: BucketOption = None,
    prefix: PrefixOption = None,
    endpoint_url: Annotated[
        str | None,
        typer.Option(help="Instead: a local endpoint (`mme serve`), e.g. http://127.0.0.1:8080; shows what is loaded."),
    ] = None,
    region: RegionOption = None,
) -> None:
    """List the model archives under a stage's model prefix: TargetModel, size and date, sorted by TargetModel (with
    --endpoint-url, a local endpoint's store and which archives it has loaded)."""
    if endpoint_url is not None:
        from mme.endpoint import endpoint_models

        if stage or bucket is not None or prefix is not None:
            raise fail("give --endpoint-url alone, or --stage, or --bucket and --prefix: one place to list")
        where, models = endpoint_url, endpoint_models(endpoint_url)
    else:
        from mme.aws.model_listing import list_prefix
        from mme.aws.model_prefix import s3_client

        session, location, _ = _model_prefix(stage=stage, owner=owner, bucket=bucket, prefix=prefix, region=region)
        where, models = location.uri(), list_prefix(s3_client(session), location)
    if not models:
        typer.echo(f"{where}: no model archives (*.tar.gz); add one with `mme upload ARCHIVE`")
        return
    header: tuple[str, ...] = ("TARGETMODEL", "SIZE", "LAST MODIFIED (UTC)")
    with_loaded = endpoint_url is not None
    rows = [header + (("LOADED",) if with_loaded else ())]
    for model in models:
        row: tuple[str, ...] = (
            model.target_model,
            decimal(model.size) if model.size is not None else "-",
            f"{model.last_modified.astimezone(UTC):%Y-%m-%d %H:%M:%S}" if model.last_modified else "-",
        )
        rows.append(row + (("yes" if model.loaded else "no",) if with_loaded else ()))
    typer.echo(f"{where}: {len(models)} model archive{'s' if len(models) != 1 else ''}")
    for line in _table(rows, right=frozenset({1})):
        typer.echo(line)
