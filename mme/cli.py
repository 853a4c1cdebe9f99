"""The ``mme`` console command."""

from __future__ import annotations

import enum
import json
import logging
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from handler.errors import HandlerError
from handler.manifest import Manifest, OutputKind, ResponseFormat
from handler.settings import DEFAULT_TOKENIZER_VARIABLE
from mme.archive import ARCHIVE_SUFFIX, ArchiveError

if TYPE_CHECKING:
    from mme.container import LocalContainer
    from mme.packaging import ModelReport

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "mme"
#: Where the image keeps its default tokenizer (container/Dockerfile; the CDK stage setting default_tokenizer).
IMAGE_DEFAULT_TOKENIZER = "/opt/mme/default-tokenizer"
_LONGEST_TEMP_BASE = 40


class ModelCacheSetting(enum.StrEnum):
    """SageMaker's ModelCacheSetting."""

    enabled = "enabled"
    disabled = "disabled"


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


def _client_error_message(error: Exception) -> str:
    """``Code: Message`` of a botocore ``ClientError``; a ModelError's message already quotes the container."""
    details = getattr(error, "response", {}).get("Error", {})
    return f"{details.get('Code', 'error')}: {details.get('Message', error)}"


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
            try:
                trained = train_demo_model(spec, Path(work))
            except RuntimeError as error:  # held-out accuracy below the bar: nothing is written
                raise _fail(str(error)) from None
            write_archive(trained.model_dir, archive)
        typer.echo(f"{archive}: labels {', '.join(spec.labels)}; held-out accuracy {trained.held_out_accuracy:.3f}")


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
        raise _fail(str(error)) from None
    except Exception as error:  # TensorFlow or transformers failing in a way the handler does not name
        logging.getLogger("mme").info("%s failed", action, exc_info=True)
        raise _fail(f"{action} failed unexpectedly: {type(error).__name__}: {error} (-v shows where)") from None


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
        raise _fail("give exactly one of --saved-model (a SavedModel folder) and --from (an archive or model folder)")
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


@app.command("demo")
def demo(
    models: Annotated[Path, typer.Option(help="Folder holding sentiment.tar.gz and topic.tar.gz.")] = Path(
        "build/demo-models"
    ),
    cache_dir: Annotated[Path, typer.Option(help="The endpoint's model cache.")] = Path("build/mme-cache"),
) -> None:
    """Start `mme serve` on the demo models, call both through boto3, print the predictions, shut down."""
    from mme.container import ContainerError
    from mme.serve_process import ServeProcess

    missing = [name for name in DEMO_SENTENCES if not (models / f"{name}{ARCHIVE_SUFFIX}").is_file()]
    if missing:
        raise _fail(f"{models} has no {', '.join(missing)}: run `mme demo-models --out {models}` first")
    with tempfile.TemporaryDirectory(prefix="mme-demo-") as work:
        typer.echo(f"starting `mme serve --store {models}` (the container's MMS behind a SageMaker-style front end)")
        try:
            endpoint = ServeProcess(models, tmp_dir=Path(work), cache_dir=cache_dir).start()
        except ContainerError as error:
            raise _fail(str(error)) from None
        from botocore.exceptions import ClientError

        try:
            client = endpoint.client(retries=3)
            typer.echo(
                f"endpoint 'local' on {endpoint.url}; boto3: invoke_endpoint(EndpointName='local', TargetModel=...)"
            )
            for name, texts in DEMO_SENTENCES.items():
                key = f"{name}{ARCHIVE_SUFFIX}"
                for text in texts:
                    answer = client.invoke_endpoint(
                        EndpointName="local",
                        TargetModel=key,
                        ContentType="application/json",
                        Body=json.dumps({"input_text": text}),
                    )
                    result = json.loads(answer["Body"].read())
                    confidence = result["scores"][result["label"]]
                    typer.echo(f"  {key:18} {result['label']:9} {confidence:6.1%}  {text}")
            typer.echo(
                f"cache: {endpoint.metric('mme_cache_hits_total'):.0f} hits, "
                f"{endpoint.metric('mme_cache_misses_total'):.0f} misses, "
                f"{endpoint.metric('mme_loaded_models'):.0f} models loaded"
            )
        except ClientError as error:
            raise _fail(_client_error_message(error)) from None
        finally:
            status = endpoint.stop()
        typer.echo(f"stopped (exit status {status})")


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}


def parse_size(text: str) -> int:
    """Bytes in a size such as ``4GiB``, ``512MB``, ``1.5g`` or ``1000000``.

    Raises:
        typer.BadParameter: the text is not a positive size.
    """
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _SIZE_UNITS or float(match.group(1)) <= 0:
        raise typer.BadParameter(f"{text!r} is not a size: use a number with an optional unit, like 4GiB or 512MB")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def _environment_pairs(pairs: list[str]) -> dict[str, str]:
    environment = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{pair!r} must look like NAME=VALUE")
        environment[name] = value
    return environment


@app.command("serve")
def serve(
    store: Annotated[
        str, typer.Option(help="Model store: a folder or s3://bucket/prefix/. TargetModel is a key in it.")
    ],
    endpoint_name: Annotated[str, typer.Option(help="The EndpointName this endpoint answers to.")] = "local",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8080,
    cache_dir: Annotated[
        Path, typer.Option(help="Downloaded and extracted models; kept across runs.")
    ] = DEFAULT_CACHE_DIR,
    max_loaded_models: Annotated[int | None, typer.Option(min=1, help="Most models loaded at once.")] = None,
    memory_budget: Annotated[
        str | None, typer.Option(help="Resident memory all model workers may use, e.g. 4GiB. Default: no limit.")
    ] = None,
    model_cache: Annotated[
        ModelCacheSetting, typer.Option(help="disabled unloads each model after its invocation.")
    ] = ModelCacheSetting.enabled,
    load_wait_seconds: Annotated[
        float, typer.Option(min=0.0, help="How long a request waits for a cold load before ModelNotReadyException.")
    ] = 60.0,
    container_env: Annotated[
        list[str] | None, typer.Option(help="Container tunable NAME=VALUE (repeatable), e.g. MME_LOG_LEVEL=DEBUG.")
    ] = None,
    default_tokenizer: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            file_okay=False,
            help="Tokenizer folder (save_pretrained) for archives that ship none, like the image's default_tokenizer.",
        ),
    ] = None,
    image: Annotated[
        str | None,
        typer.Option(
            help="Run this serving image on the local Docker engine (e.g. mme-serving:local from `make image`) "
            "instead of the container's software as host processes."
        ),
    ] = None,
    memory: Annotated[
        str | None, typer.Option(help="With --image: the container's memory limit, e.g. 2g (docker run --memory).")
    ] = None,
) -> None:
    """Run a local multi-model endpoint with SageMaker's runtime API, backed by the real container software."""
    from mme.container import ContainerError
    from mme.endpoint import EndpointConfig, run_endpoint
    from mme.models import CachePolicy
    from mme.store import StoreError, open_store

    # One line per load and unload, with timings, is part of what the command shows.
    logging.getLogger("mme").setLevel(min(logging.getLogger("mme").getEffectiveLevel(), logging.INFO))
    budget = parse_size(memory_budget) if memory_budget is not None else None
    environment = _environment_pairs(container_env or [])
    if memory is not None and image is None:
        raise _fail("--memory limits the image's container: give --image too")
    if default_tokenizer is not None:
        # In the image, the folder is mounted where the image keeps its own default tokenizer.
        environment[DEFAULT_TOKENIZER_VARIABLE] = IMAGE_DEFAULT_TOKENIZER if image else str(default_tokenizer.resolve())
    try:
        model_store = open_store(store)
    except StoreError as error:
        raise _fail(str(error)) from None
    # MMS's worker sockets live in the run folder, and Unix socket paths are short: avoid a long TMPDIR.
    temp_base = tempfile.gettempdir()
    if len(temp_base) > _LONGEST_TEMP_BASE and Path("/tmp").is_dir():  # noqa: S108
        temp_base = "/tmp"  # noqa: S108
    with tempfile.TemporaryDirectory(prefix="mme-serve-", dir=temp_base) as run_dir:
        config = EndpointConfig(
            store=model_store,
            run_dir=Path(run_dir),
            cache_dir=cache_dir,
            endpoint_name=endpoint_name,
            policy=CachePolicy(
                max_loaded_models=max_loaded_models,
                memory_budget_bytes=budget,
                keep_loaded=model_cache is ModelCacheSetting.enabled,
                load_wait_seconds=load_wait_seconds,
            ),
            container_environment=environment,
            container=_image_container(
                image, run_dir=Path(run_dir), cache_dir=cache_dir, environment=environment, memory=memory,
                default_tokenizer=default_tokenizer,
            ) if image else None,
        )  # fmt: skip
        try:
            run_endpoint(
                config,
                host=host,
                port=port,
                on_ready=lambda url: typer.echo(
                    f"mme serve: endpoint {endpoint_name!r} on {url} (store {model_store.uri}, cache {cache_dir}); "
                    "Ctrl-C stops it"
                ),
            )
        except ContainerError as error:
            raise _fail(f"the model container did not start: {error}") from None
        except OSError as error:
            raise _fail(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


def _image_container(
    image: str,
    *,
    run_dir: Path,
    cache_dir: Path,
    environment: dict[str, str],
    memory: str | None,
    default_tokenizer: Path | None,
) -> LocalContainer:
    from mme.image import ImageContainer

    models_root = cache_dir / "models"
    models_root.mkdir(parents=True, exist_ok=True)
    return ImageContainer(
        run_dir / "container",
        image=image,
        models_root=models_root,
        environment=environment,
        memory=memory,
        mounts={default_tokenizer: IMAGE_DEFAULT_TOKENIZER} if default_tokenizer else None,
    )


@app.command("invoke")
def invoke(
    endpoint: Annotated[str, typer.Option("--endpoint", help="EndpointName.")],
    model: Annotated[str, typer.Option("--model", help="TargetModel: the archive key, e.g. sentiment.tar.gz.")],
    text: Annotated[str | None, typer.Option(help="One text to classify.")] = None,
    file: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="A request body file (JSON, or JSON Lines if .jsonl)."),
    ] = None,
    endpoint_url: Annotated[
        str | None, typer.Option(help="e.g. http://127.0.0.1:8080 for `mme serve`; default: AWS.")
    ] = None,
    region: Annotated[str | None, typer.Option(help="AWS region; default from the AWS configuration.")] = None,
) -> None:
    """Invoke a model on an endpoint (local or on AWS) and print the prediction."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    from mme.serve_process import DUMMY_CREDENTIALS

    if (text is None) == (file is None):
        raise _fail("give exactly one of --text and --file")
    if text is not None:
        body, content_type = json.dumps({"input_text": text}).encode(), "application/json"
    else:
        assert file is not None
        body = file.read_bytes()
        content_type = "application/jsonlines" if file.suffix in {".jsonl", ".jsonlines"} else "application/json"
    session = boto3.session.Session(region_name=region)
    options: dict[str, object] = {}
    if endpoint_url is not None:
        options["endpoint_url"] = endpoint_url
        if session.get_credentials() is None:
            options.update(DUMMY_CREDENTIALS)
        if session.region_name is None:
            options["region_name"] = "us-east-1"
    client = session.client("sagemaker-runtime", **options)
    try:
        answer = client.invoke_endpoint(EndpointName=endpoint, TargetModel=model, ContentType=content_type, Body=body)
    except ClientError as error:
        raise _fail(_client_error_message(error)) from None
    except BotoCoreError as error:
        raise _fail(str(error)) from None
    typer.echo(answer["Body"].read().decode("utf-8", errors="replace").rstrip("\n"))


def main() -> None:
    """Console entry point."""
    try:
        app()
    except ArchiveError as error:
        typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
