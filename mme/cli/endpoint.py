"""Commands on an endpoint: invoke it (local or on AWS, waking it on demand), and sleep, wake and inspect a stage."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from mme.aws.endpoint_state import Progress, StageEndpoint
from mme.aws.names import ASLEEP, AWAKE
from mme.aws.stage import DeployedStage
from mme.cli import app
from mme.cli.output import fail
from mme.cli.stage_options import OwnerOption, RegionOption, aws_session, deployed_stage

TimeoutOption = Annotated[
    float, typer.Option(min=1.0, help="Seconds to wait for the stage to get there before giving up.")
]
PollOption = Annotated[float, typer.Option(min=0.1, help="Seconds between two looks at the stage while waiting.")]


def _stage_endpoint(session: object, stage: DeployedStage) -> StageEndpoint:
    if stage.endpoint_name is None:
        raise fail(
            f"stage {stage.names.qualified!r} has no endpoint stack ({stage.endpoint_stack}): deploy it first "
            "(npx cdk deploy, or the pipeline)"
        )
    return StageEndpoint.of(
        session,
        stack_name=stage.endpoint_stack,
        switch_parameter=stage.switch_parameter,
        endpoint_name=stage.endpoint_name,
    )


@contextmanager
def _progress_bar(what: str) -> Iterator[Callable[[Progress], None]]:
    """A progress bar with elapsed time and an estimate of the time left, fed by `Progress` looks."""
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.progress import Progress as Bar

    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Bar(*columns, transient=False) as bar:
        task = bar.add_task(what, total=1.0)

        def show(look: Progress) -> None:
            total = look.elapsed + look.remaining
            bar.update(task, total=total, completed=look.elapsed, description=f"{what}: {look.state.describe()}")

        yield show
        bar.update(task, completed=bar.tasks[0].total)


def _change(stage_name: str, owner: str, region: str | None, state: str, timeout: float, poll: float) -> None:
    session = aws_session(region)
    stage = deployed_stage(session, stage_name, owner)
    endpoint = _stage_endpoint(session, stage)
    before = endpoint.state()
    if (state == AWAKE and before.serving) or (state == ASLEEP and before.asleep):
        typer.echo(f"{stage.endpoint_stack}: already {state} ({before.describe()})")
        return
    verb = "waking" if state == AWAKE else "putting to sleep"
    with _progress_bar(f"{verb} {stage.endpoint_name}") as show:
        after = endpoint.change(state, timeout_seconds=timeout, on_progress=show, poll_seconds=poll)
    typer.echo(f"{stage.endpoint_stack}: {after.describe()}")


@app.command("sleep")
def sleep(
    stage: Annotated[str, typer.Option("--stage", help="Stage name from cdk.json, e.g. dev.")],
    owner: OwnerOption = "",
    region: RegionOption = None,
    timeout: TimeoutOption = 1800.0,
    poll: PollOption = 15.0,
) -> None:
    """Stop paying for the stage's endpoint: remove it (and its autoscaling and alarms) through its stack, keeping
    the model, its configuration and every model in the store. `mme wake` brings it back."""
    _change(stage, owner, region, ASLEEP, timeout, poll)


@app.command("wake")
def wake(
    stage: Annotated[str, typer.Option("--stage", help="Stage name from cdk.json, e.g. dev.")],
    owner: OwnerOption = "",
    region: RegionOption = None,
    timeout: TimeoutOption = 1800.0,
    poll: PollOption = 15.0,
) -> None:
    """Bring a sleeping stage's endpoint back through its stack and wait until it is in service (minutes)."""
    _change(stage, owner, region, AWAKE, timeout, poll)


@app.command("status")
def status(
    stage: Annotated[str, typer.Option("--stage", help="Stage name from cdk.json, e.g. dev.")],
    owner: OwnerOption = "",
    region: RegionOption = None,
) -> None:
    """Show whether the stage's endpoint is awake or asleep, its stack's and endpoint's status, and where its models
    are."""
    session = aws_session(region)
    deployed = deployed_stage(session, stage, owner)
    typer.echo(f"stage:    {deployed.names.qualified} ({deployed.region})")
    typer.echo(f"models:   s3://{deployed.bucket}/{deployed.model_prefix}")
    if deployed.endpoint_name is None:
        typer.echo(f"endpoint: no endpoint stack ({deployed.endpoint_stack} is not deployed)")
        return
    state = _stage_endpoint(session, deployed).state()
    typer.echo(f"endpoint: {deployed.endpoint_name}: {state.describe()}")


@app.command("invoke")
def invoke(
    model: Annotated[str, typer.Option("--model", help="TargetModel: the archive key, e.g. sentiment.tar.gz.")],
    text: Annotated[str | None, typer.Option(help="One text to classify.")] = None,
    file: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="A request body file (JSON, or JSON Lines if .jsonl)."),
    ] = None,
    endpoint: Annotated[str | None, typer.Option("--endpoint", help="EndpointName (or give --stage).")] = None,
    stage: Annotated[str | None, typer.Option("--stage", help="Invoke this stage's endpoint.")] = None,
    owner: OwnerOption = "",
    wake: Annotated[
        bool, typer.Option("--wake", help="With --stage: wake a sleeping endpoint first, and wait for it.")
    ] = False,
    endpoint_url: Annotated[
        str | None, typer.Option(help="e.g. http://127.0.0.1:8080 for `mme serve`; default: AWS.")
    ] = None,
    region: RegionOption = None,
) -> None:
    """Invoke a model on an endpoint (local or on AWS) and print the answer. ModelNotReadyException and throttling
    are retried with backoff; with --stage and --wake a sleeping endpoint is woken first."""
    import boto3

    from mme.aws.runtime import runtime_client
    from mme.serve_process import DUMMY_CREDENTIALS

    if (text is None) == (file is None):
        raise fail("give exactly one of --text and --file")
    if (endpoint is None) == (stage is None):
        raise fail("give exactly one of --endpoint (an endpoint name) and --stage (a deployed stage)")
    if wake and stage is None:
        raise fail("--wake needs --stage: only a deployed stage can be woken")
    if text is not None:
        body, content_type = json.dumps({"input_text": text}).encode(), "application/json"
    else:
        assert file is not None
        body = file.read_bytes()
        content_type = "application/jsonlines" if file.suffix in {".jsonl", ".jsonlines"} else "application/json"

    if stage is not None:
        from mme.client import StageClient

        session = aws_session(region)
        with _progress_bar(f"waking stage {stage}") if wake else _no_progress() as show:
            client = StageClient(stage, owner=owner, session=session, wake=wake, on_progress=show)
            answer = client.invoke(model, body, content_type=content_type)
        typer.echo(answer.decode("utf-8", errors="replace").rstrip("\n"))
        return

    local = endpoint_url is not None
    session = boto3.session.Session(region_name=region or ("us-east-1" if local else None))
    if local and session.get_credentials() is None:
        session = boto3.session.Session(
            region_name=session.region_name,
            aws_access_key_id=DUMMY_CREDENTIALS["aws_access_key_id"],
            aws_secret_access_key=DUMMY_CREDENTIALS["aws_secret_access_key"],
        )
    if session.region_name is None:
        raise fail("no AWS region: give --region or set AWS_REGION / AWS_DEFAULT_REGION")
    client = runtime_client(session, endpoint_url=endpoint_url)
    answer = client.invoke_endpoint(EndpointName=endpoint, TargetModel=model, ContentType=content_type, Body=body)
    typer.echo(answer["Body"].read().decode("utf-8", errors="replace").rstrip("\n"))


@contextmanager
def _no_progress() -> Iterator[None]:
    yield None
