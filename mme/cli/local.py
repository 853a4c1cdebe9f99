"""Commands of the local endpoint: demo models, the demo and `mme serve`."""

from __future__ import annotations

import enum
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from handler.settings import DEFAULT_TOKENIZER_VARIABLE
from mme.archive import ARCHIVE_SUFFIX
from mme.cli import app, error_message
from mme.cli.output import environment_pairs, fail, parse_size
from mme.endpoint import BODY_TIMEOUT_SECONDS, INVOCATION_TIMEOUT_SECONDS, SHUTDOWN_GRACE_SECONDS
from mme.metrics import MAX_MODEL_LABELS
from mme.models import LOAD_TIMEOUT_SECONDS, TOO_LARGE_SECONDS
from mme.telemetry.capture_destination import capture_destination

if TYPE_CHECKING:
    from mme.container import LocalContainer

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "mme"
#: Where the image keeps its default tokenizer (container/Dockerfile; the CDK stage setting default_tokenizer).
IMAGE_DEFAULT_TOKENIZER = "/opt/mme/default-tokenizer"
_LONGEST_TEMP_BASE = 40
#: ``MME_METRICS_INTERVAL_SECONDS`` for ``mme serve``'s container: its per-model figures follow within seconds.
LOCAL_METRICS_INTERVAL_SECONDS = 5
#: What an image container capturing to S3 needs of this command's environment.
AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
)


class ModelCacheSetting(enum.StrEnum):
    """SageMaker's ModelCacheSetting."""

    enabled = "enabled"
    disabled = "disabled"


DEMO_SENTENCES: dict[str, tuple[str, ...]] = {
    "sentiment": ("I loved this film, it was wonderful", "terrible service, I hated every minute"),
    "topic": (
        "the striker scored twice in the final match",
        "the new laptop ships with a faster processor",
        "simmer the garlic and tomatoes for the pasta sauce",
        "we booked a cheap flight and a hotel by the beach",
    ),
}


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
                raise fail(str(error)) from None
            write_archive(trained.model_dir, archive)
        typer.echo(f"{archive}: labels {', '.join(spec.labels)}; held-out accuracy {trained.held_out_accuracy:.3f}")


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
        raise fail(f"{models} has no {', '.join(missing)}: run `mme demo-models --out {models}` first")
    with tempfile.TemporaryDirectory(prefix="mme-demo-") as work:
        typer.echo(f"starting `mme serve --store {models}` (the container's MMS behind a SageMaker-style front end)")
        try:
            endpoint = ServeProcess(models, tmp_dir=Path(work), cache_dir=cache_dir).start()
        except ContainerError as error:
            raise fail(str(error)) from None
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
            raise fail(error_message(error)) from None
        finally:
            status = endpoint.stop()
        typer.echo(f"stopped (exit status {status})")


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
    max_cache_size: Annotated[
        str | None,
        typer.Option(
            help="Disk the cache's models and downloads may take, e.g. 5GiB; least recently used copies are deleted "
            "first. Default: 20GiB."
        ),
    ] = None,
    max_loaded_models: Annotated[int | None, typer.Option(min=1, help="Most models loaded at once.")] = None,
    memory_budget: Annotated[
        str | None,
        typer.Option(
            help="Memory the loaded models may take together, as the kernel charges it (model workers' PSS; in an "
            "image, the container's cgroup charge above its charge with no model), e.g. 4GiB. Default: no limit."
        ),
    ] = None,
    model_cache: Annotated[
        ModelCacheSetting, typer.Option(help="disabled unloads each model after its invocation.")
    ] = ModelCacheSetting.enabled,
    load_wait_seconds: Annotated[
        float, typer.Option(min=0.0, help="How long a request waits for a cold load before ModelNotReadyException.")
    ] = 60.0,
    load_timeout_seconds: Annotated[
        float, typer.Option(min=0.1, help="How long a model may take to load before the load is abandoned.")
    ] = LOAD_TIMEOUT_SECONDS,
    too_large_seconds: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="How long a model version that does not fit in memory even alone is refused at once, without "
            "evicting or loading.",
        ),
    ] = TOO_LARGE_SECONDS,
    body_timeout_seconds: Annotated[
        float, typer.Option(min=0.1, help="How long a request's body may take after its headers before a 408.")
    ] = BODY_TIMEOUT_SECONDS,
    invocation_timeout_seconds: Annotated[
        float, typer.Option(min=0.1, help="How long a loaded model may take to answer (SageMaker: 60 s).")
    ] = INVOCATION_TIMEOUT_SECONDS,
    shutdown_grace_seconds: Annotated[
        float, typer.Option(min=0.0, max=25.0, help="After SIGTERM, how long requests in flight may take to finish.")
    ] = SHUTDOWN_GRACE_SECONDS,
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
    capture: Annotated[
        str | None,
        typer.Option(
            help="Capture requests as JSON Lines into this folder or s3://bucket/prefix/, as a deployed stage does "
            "(docs/observability.md); the share captured is MME_CAPTURE_PERCENT (default 100), per model "
            "MME_CAPTURE_MODEL_PERCENT, set with --container-env.",
        ),
    ] = None,
    metrics_max_models: Annotated[
        int,
        typer.Option(
            min=1, help='Models with a label of their own in GET /metrics; the rest are folded into model="other".'
        ),
    ] = MAX_MODEL_LABELS,
) -> None:
    """Run a local multi-model endpoint with SageMaker's runtime API, backed by the real container software."""
    from handler.settings import ServingSettings, SettingsError
    from mme.cache_storage import DEFAULT_MAX_CACHE_BYTES, check_writable
    from mme.container import ContainerError
    from mme.endpoint import EndpointConfig, run_endpoint
    from mme.models import CachePolicy
    from mme.store import StoreError, open_store

    # One line per load and unload, with timings, is part of what the command shows.
    logging.getLogger("mme").setLevel(min(logging.getLogger("mme").getEffectiveLevel(), logging.INFO))
    budget = parse_size(memory_budget) if memory_budget is not None else None
    cache_bytes = parse_size(max_cache_size) if max_cache_size is not None else DEFAULT_MAX_CACHE_BYTES
    environment = environment_pairs(container_env or [])
    if capture is not None:
        environment["MME_CAPTURE_DESTINATION"] = capture_destination(capture)  # raises CaptureError, worded once
    # The container's per-model figures, every few seconds here (60 s on AWS), named after this endpoint.
    environment.setdefault("MME_METRICS_INTERVAL_SECONDS", str(LOCAL_METRICS_INTERVAL_SECONDS))
    environment.setdefault("MME_METRICS_ENDPOINT", endpoint_name)
    try:
        # The container's own settings, read the way it reads them: the body limit is the same on both sides.
        container_settings = ServingSettings.from_env(environment)
    except SettingsError as error:
        raise fail(f"--container-env: {error}") from None
    if memory is not None and image is None:
        raise fail("--memory limits the image's container: give --image too")
    if default_tokenizer is not None:
        # In the image, the folder is mounted where the image keeps its own default tokenizer.
        environment[DEFAULT_TOKENIZER_VARIABLE] = IMAGE_DEFAULT_TOKENIZER if image else str(default_tokenizer.resolve())
    try:
        model_store = open_store(store)
    except StoreError as error:
        raise fail(str(error)) from None
    check_writable(cache_dir)  # before any container starts: an unwritable cache is an error naming the folder
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
                load_timeout_seconds=load_timeout_seconds,
                too_large_seconds=too_large_seconds,
                max_cache_bytes=cache_bytes,
            ),
            container_environment=environment,
            body_timeout_seconds=body_timeout_seconds,
            max_payload_bytes=container_settings.max_payload_mb * 1024 * 1024,
            invocation_timeout_seconds=invocation_timeout_seconds,
            shutdown_grace_seconds=shutdown_grace_seconds,
            metrics_max_models=metrics_max_models,
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
            raise fail(f"the model container did not start: {error}") from None
        except OSError as error:
            raise fail(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


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
    capture = environment.get("MME_CAPTURE_DESTINATION", "")
    if capture.startswith("s3://"):
        # The container writes to S3 with the credentials (and endpoint) this command runs with.
        environment = {**environment, **{name: value for name, value in os.environ.items() if name in AWS_VARIABLES}}
    return ImageContainer(
        run_dir / "container",
        image=image,
        models_root=models_root,
        environment=environment,
        memory=memory,
        mounts={default_tokenizer: IMAGE_DEFAULT_TOKENIZER} if default_tokenizer else None,
        # A captured folder is written at the same path inside the container as here.
        writable_mounts={Path(capture): capture} if capture and not capture.startswith("s3://") else None,
    )
