"""`mme cost`: what a stage costs per month on one multi-model endpoint, against one endpoint per model."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from mme.aws.cost import (
    DEFAULT_MODEL_COUNTS,
    DENSITY_FILE,
    METRICS_PER_MODEL,
    PRICES_FILE,
    CostEstimate,
    load_density,
    load_prices,
    planned_cost,
    stage_cost,
)
from mme.cli import app
from mme.cli.stage_options import OwnerOption, RegionOption, aws_session, deployed_stage


class OutputFormat(enum.StrEnum):
    text = "text"
    markdown = "markdown"


@app.command("cost")
def cost(
    context: typer.Context,
    stage: Annotated[
        str, typer.Option("--stage", help="Read this deployed stage (e.g. dev); without it, cost the options.")
    ] = "",
    owner: OwnerOption = "",
    region: RegionOption = None,
    models: Annotated[
        list[int] | None,
        typer.Option("--models", help="Model counts, one row each; repeat the option (default 10, 50 and 200)."),
    ] = None,
    instance_type: Annotated[
        str | None, typer.Option("--instance-type", help="Instead of the stage's (default ml.m5.large).")
    ] = None,
    instances: Annotated[
        int | None, typer.Option("--instances", help="Instances the endpoint keeps at least (default 1).")
    ] = None,
    hours_awake: Annotated[
        float | None,
        typer.Option("--hours-awake", help="Hours a month the endpoint exists (default: CloudWatch, else 730)."),
    ] = None,
    output: Annotated[OutputFormat, typer.Option("--format", help="markdown: the table for the README.")] = (
        OutputFormat.text
    ),
    density_file: Annotated[
        Path, typer.Option("--density", help="Measured density (`make bench-density`).", show_default=False)
    ] = DENSITY_FILE,
    prices_file: Annotated[
        Path, typer.Option("--prices", help="Price table (approximate, us-east-1).", show_default=False)
    ] = PRICES_FILE,
) -> None:
    """Monthly cost of a stage (as deployed, or as given) for 10, 50 and 200 models, against one endpoint each."""
    # MME_OWNER may be exported for other commands; only an --owner typed here without --stage is a mistake.
    # (Typer carries its own copy of click, so the source is compared by name.)
    source = context.get_parameter_source("owner")
    if source is not None and source.name == "COMMANDLINE" and not stage:
        raise typer.BadParameter("--owner names the owner of a --stage; give --stage too", param_hint="--owner")
    prices = load_prices(prices_file)
    density = load_density(density_file)
    counts = tuple(models or DEFAULT_MODEL_COUNTS)
    if stage:
        session = aws_session(region)
        estimate = stage_cost(
            session,
            deployed_stage(session, stage, owner),
            counts,
            prices=prices,
            density=density,
            instance_type=instance_type,
            instance_count=instances,
            hours_awake=hours_awake,
        )
    else:
        estimate = planned_cost(
            counts,
            prices=prices,
            density=density,
            instance_type=instance_type,
            instance_count=instances,
            hours_awake=hours_awake,
        )
    typer.echo(render_markdown(estimate) if output is OutputFormat.markdown else render_text(estimate))


def _usd(value: float) -> str:
    return f"{value:,.2f}"


def _table(estimate: CostEstimate) -> tuple[list[str], list[list[str]]]:
    assert estimate.instance is not None
    assert estimate.single_instance is not None
    header = ["models", "MME instances", "MME USD/month", "one endpoint per model", "USD/month", "saving USD/month"]
    body = [
        [
            str(row.models),
            f"{row.instances} x {estimate.instance.name}",
            _usd(row.mme_usd),
            f"{row.single_endpoints} x {estimate.single_instance.name}",
            _usd(row.single_usd),
            f"{_usd(row.saving_usd)} ({row.saving_percent:.0f}%)",
        ]
        for row in estimate.rows
    ]
    return header, body


def _other_costs(estimate: CostEstimate) -> str:
    items = ", ".join(f"{name} {_usd(usd)}" for name, usd in estimate.other_usd.items())
    return f"USD {_usd(estimate.other_total_usd)}/month ({items})"


def _model_metrics_costs(estimate: CostEstimate) -> str | None:
    """The per-model metrics' upper bound for each model count, or None when the endpoint writes none."""
    rows = [row for row in estimate.rows if row.model_metrics_usd]
    if not rows:
        return None
    items = ", ".join(
        f"up to {row.models} models x {METRICS_PER_MODEL} metrics USD {_usd(row.model_metrics_usd)}/month"
        for row in rows
    )
    return (
        f"Per-model metrics, an upper bound (every model busy every hour awake), in no column: {items}; a stage's "
        "model_metrics: false removes them"
    )


def render_text(estimate: CostEstimate) -> str:
    """The estimate as aligned plain text: title, table, the stage's other costs, then the assumptions."""
    lines = [estimate.title, ""]
    if estimate.rows:
        header, body = _table(estimate)
        widths = [max(len(cell) for cell in column) for column in zip(header, *body, strict=True)]
        for cells in (header, *body):
            lines.append("  ".join(cell.rjust(width) for cell, width in zip(cells, widths, strict=True)))
        lines += ["", f"Also billed for the stage, in no column: {_other_costs(estimate)}"]
        metrics = _model_metrics_costs(estimate)
        if metrics:
            lines += ["", metrics]
    else:
        lines.append(f"Billed for the stage: {_other_costs(estimate)}")
    lines += ["", "Assumptions:", *(f"- {note}" for note in estimate.assumptions)]
    return "\n".join(lines)


def render_markdown(estimate: CostEstimate) -> str:
    """The estimate as Markdown, for the README: the same table, other costs and assumptions."""
    lines = [f"**{estimate.title}**", ""]
    if estimate.rows:
        header, body = _table(estimate)
        text_columns = {1, 3}
        lines += [
            "| " + " | ".join(header) + " |",
            "| " + " | ".join("---" if i in text_columns else "---:" for i in range(len(header))) + " |",
            *("| " + " | ".join(cells) + " |" for cells in body),
            "",
            f"Also billed for the stage, in no column: {_other_costs(estimate)}.",
        ]
        metrics = _model_metrics_costs(estimate)
        if metrics:
            lines += ["", f"{metrics}."]
    else:
        lines.append(f"Billed for the stage: {_other_costs(estimate)}.")
    lines += ["", "Assumptions:", "", *(f"- {note}" for note in estimate.assumptions)]
    return "\n".join(lines)
