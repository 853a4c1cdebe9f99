"""Commands on model archives: package and inspect them."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from handler.errors import HandlerError
from handler.manifest import Manifest, OutputKind, ResponseFormat
from mme.archive import ArchiveError
from mme.cli import app
from mme.cli.output import fail

if TYPE_CHECKING:
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
