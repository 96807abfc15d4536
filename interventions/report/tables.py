"""Terminal tables (rich) for what the commands found."""

from __future__ import annotations

from rich.table import Table

from ..progress import console


def print_detection(result) -> None:
    sinks = result.sinks
    n_traces = len(result.traces)
    primary = sinks[sinks.kind == "primary"]
    secondary = sinks[sinks.kind == "secondary"]
    console.print(f"{n_traces} traces: {len(primary)} primary sinks, {len(secondary)} secondary sinks", highlight=False)
    if len(result.levels):
        table = Table(title="secondary sink levels")
        for col in ("l_start", "lifetime", "count"):
            table.add_column(col, justify="right")
        for row in result.levels.itertuples():
            table.add_row(str(row.l_start), str(row.lifetime), str(row.count))
        console.print(table)
    if len(result.tokens):
        table = Table(title="secondary sink tokens")
        for col in ("token", "id", "count", "share"):
            table.add_column(col, justify="right")
        for row in result.tokens.head(10).itertuples():
            table.add_row(repr(row.token), str(row.token_id), str(row.count), f"{row.share:.1%}")
        console.print(table)
