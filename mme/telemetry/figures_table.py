"""`mme top`'s view of a `FiguresFrame`: a rich table of the busiest models."""

from __future__ import annotations

from rich.table import Table

from mme.telemetry.model_figures import FiguresFrame, ModelFigures

#: Column headers, in order.
COLUMNS = ("MODEL", "REQ/S", "REQUESTS", "P50 MS", "P99 MS", "ERRORS", "ERR %", "4XX", "5XX", "LOADED")


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _loaded(loaded: bool | None) -> str:
    return "?" if loaded is None else ("yes" if loaded else "no")


def _span(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def figures_row(figures: ModelFigures) -> tuple[str, ...]:
    """One model's cells, in `COLUMNS` order ("-" for a figure there is none of, "?" for unknown)."""
    return (
        figures.model,
        _number(figures.requests_per_second, 2),
        f"{figures.requests:,}",
        _number(figures.p50_ms),
        _number(figures.p99_ms),
        f"{figures.errors:,}",
        "-" if figures.error_rate is None else f"{figures.error_rate * 100:.1f}",
        f"{figures.errors_4xx:,}",
        f"{figures.errors_5xx:,}",
        _loaded(figures.loaded),
    )


def figures_table(frame: FiguresFrame, *, limit: int) -> Table:
    """The `limit` busiest models of `frame` (most requests per second first), titled with the source and span."""
    shown = frame.busiest(limit)
    table = Table(
        title=f"{frame.source}: requests over {_span(frame.span_seconds)}, to {frame.taken_at:%H:%M:%S} UTC",
        caption=f"{len(shown)} of {len(frame.models)} model(s), by requests per second",
        title_justify="left",
        caption_justify="left",
    )
    for header in COLUMNS:
        if header == "MODEL":
            table.add_column(header, overflow="fold")
        else:
            table.add_column(header, justify="right", no_wrap=True)
    for figures in shown:
        table.add_row(*figures_row(figures))
    return table
