"""The ``mme`` console command."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from mme.archive import ARCHIVE_SUFFIX, ArchiveError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Many text classifiers on one SageMaker multi-model endpoint: build, package and serve them.",
)

DEMO_SENTENCES: dict[str, tuple[str, ...]] = {
    "sentiment": ("I loved this film, it was wonderful", "terrible service, I hated every minute"),
    "topic": (
        "the striker scored twice in the final match",
        "the new laptop ships with a faster processor",
        "simmer the garlic and tomatoes for the pasta sauce",
        "we booked a cheap flight and a hotel by the beach",
    ),
}


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


@app.callback()
def _configure(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress.")] = False) -> None:
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@app.command("demo-models")
def demo_models(
    out: Annotated[Path, typer.Option("--out", help="Folder for sentiment.tar.gz and topic.tar.gz.")],
    force: Annotated[bool, typer.Option(help="Rebuild archives that already exist.")] = False,
) -> None:
    """Train the two demo classifiers on generated text and write their archives."""
    from mme.archive import write_archive
    from mme.demo_models import DEMO_MODELS, train_demo_model

    out.mkdir(parents=True, exist_ok=True)
    for spec in DEMO_MODELS:
        archive = out / f"{spec.name}{ARCHIVE_SUFFIX}"
        if archive.exists() and not force:
            typer.echo(f"{archive}: exists (use --force to rebuild)")
            continue
        with tempfile.TemporaryDirectory(prefix=f"mme-{spec.name}-") as work:
            trained = train_demo_model(spec, Path(work))
            write_archive(trained.model_dir, archive)
        typer.echo(f"{archive}: labels {', '.join(spec.labels)}; held-out accuracy {trained.held_out_accuracy:.3f}")


@app.command("package")
def package(
    saved_model: Annotated[Path, typer.Option("--saved-model", help="Folder written by tf.saved_model.save.")],
    tokenizer: Annotated[Path, typer.Option("--tokenizer", help="Folder written by a tokenizer's save_pretrained.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Archive to write: <model>.tar.gz.")],
    labels: Annotated[str | None, typer.Option(help="Class names in logit order, comma-separated.")] = None,
    max_sequence_length: Annotated[
        int | None, typer.Option(min=2, help="Tokens per text; longer texts are truncated. Default 128.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
) -> None:
    """Build a model archive and validate it by loading it with the handler and predicting once."""
    from mme.archive import package_model

    try:
        prediction = package_model(
            saved_model=saved_model,
            tokenizer=tokenizer,
            output=output,
            labels=labels.split(",") if labels is not None else None,
            max_sequence_length=max_sequence_length,
            overwrite=overwrite,
        )
    except ArchiveError as error:
        raise _fail(str(error)) from None
    typer.echo(f"{output}: valid; labels {', '.join(prediction.scores)}; test prediction {prediction.label!r}")


@app.command("demo")
def demo(
    models: Annotated[Path, typer.Option(help="Folder holding sentiment.tar.gz and topic.tar.gz.")] = Path(
        "build/demo-models"
    ),
) -> None:
    """Start the serving container's entrypoint, load both demo models, print predictions, stop."""
    from mme.archive import extract_archive
    from mme.container import LocalContainer

    archives = {name: models / f"{name}{ARCHIVE_SUFFIX}" for name in DEMO_SENTENCES}
    missing = [str(path) for path in archives.values() if not path.is_file()]
    if missing:
        raise _fail(f"missing {', '.join(missing)}: run `mme demo-models --out {models}` first")
    with tempfile.TemporaryDirectory(prefix="mme-demo-") as work_name:
        work = Path(work_name)
        typer.echo("starting the serving container's entrypoint (MMS) ...")
        with LocalContainer(work / "run") as container:
            for name, archive in archives.items():
                try:
                    model_dir = extract_archive(archive, work / "models" / name)
                except ArchiveError as error:
                    raise _fail(str(error)) from None
                loaded = container.client.load(name, model_dir)
                if loaded.status != 200:
                    raise _fail(f"loading {name} failed with {loaded.status}: {loaded.body.decode(errors='replace')}")
                typer.echo(f"loaded {name}")
                for text in DEMO_SENTENCES[name]:
                    answer = container.client.invoke(name, json.dumps({"input_text": text}))
                    result = answer.json()
                    if answer.status != 200:
                        raise _fail(f"{name} answered {answer.status}: {result}")
                    confidence = result["scores"][result["label"]]
                    typer.echo(f"  {name:9} {result['label']:9} {confidence:5.1%}  {text}")
        typer.echo("stopped")


def main() -> None:
    """Console entry point."""
    try:
        app()
    except ArchiveError as error:
        typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
