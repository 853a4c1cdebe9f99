"""``mme top``: the busiest models of an endpoint, live: requests per second, latency, errors, loaded or not."""

from __future__ import annotations

from typing import Annotated

import typer

from mme.cli import app
from mme.cli.output import fail
from mme.cli.stage_options import OwnerOption, RegionOption, aws_session, deployed_stage
from mme.telemetry.model_figures import FigureSource

#: Where `mme serve` listens unless told otherwise.
DEFAULT_ENDPOINT_URL = "http://127.0.0.1:8080"
#: Columns of the view when the output is not a terminal (a pipe or a file): a model name of about 40 characters.
_SCRIPT_WIDTH = 140


def _source(*, stage: str, owner: str, endpoint_url: str | None, region: str | None) -> FigureSource:
    """The figures named by ``--stage [--owner]`` or ``--endpoint-url`` (default: a local `mme serve`)."""
    if stage and endpoint_url is not None:
        raise fail("give --stage (a stage's CloudWatch metrics) or --endpoint-url (a local endpoint), not both")
    if not stage:
        from mme.telemetry.prometheus_figures import PrometheusSource

        return PrometheusSource(endpoint_url or DEFAULT_ENDPOINT_URL)
    from mme.telemetry.cloudwatch_figures import CloudWatchSource

    session = aws_session(region)
    deployed = deployed_stage(session, stage, owner)
    if deployed.endpoint_name is None:
        raise fail(
            f"stage {deployed.names.qualified!r} has no endpoint stack ({deployed.endpoint_stack}): deploy it first "
            "(npx cdk deploy, or the pipeline)"
        )
    return CloudWatchSource.of(session, deployed.endpoint_name)


@app.command("top")
def top(
    stage: Annotated[
        str, typer.Option("--stage", help="A deployed stage: its endpoint's per-model CloudWatch metrics.")
    ] = "",
    owner: OwnerOption = "",
    endpoint_url: Annotated[
        str | None,
        typer.Option(help=f"A local endpoint (`mme serve`): its /metrics page. Default: {DEFAULT_ENDPOINT_URL}."),
    ] = None,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between two refreshes.")] = 2.0,
    limit: Annotated[int, typer.Option(min=1, help="Models shown at most (the busiest).")] = 15,
    once: Annotated[
        bool,
        typer.Option(
            "--once", help="Print one view and exit (a local endpoint is scraped twice, --interval apart, for rates)."
        ),
    ] = False,
    region: RegionOption = None,
) -> None:
    """Show the busiest models, refreshing in place until Ctrl-C: requests per second, p50 and p99 latency (ms),
    errors (count, rate, 4xx/5xx) and whether each is loaded. A local endpoint's figures are between its last two
    scrapes; a stage's are over the last 5 whole minutes of CloudWatch (refreshed once a minute)."""
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from mme.telemetry.figures_table import figures_table
    from mme.telemetry.model_figures import frames

    source = _source(stage=stage, owner=owner, endpoint_url=endpoint_url, region=region)
    views = frames(source, interval_seconds=interval)
    console = Console()
    if not console.is_terminal:
        console = Console(width=_SCRIPT_WIDTH)
    if once:
        console.print(figures_table(next(views), limit=limit))
        return
    try:
        with Live(Text(f"reading {source.description} ..."), console=console, auto_refresh=False) as live:
            for frame in views:
                live.update(figures_table(frame, limit=limit), refresh=True)
    except KeyboardInterrupt:
        pass
