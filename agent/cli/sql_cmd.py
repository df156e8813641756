"""``infermeter sql``: one read-only query on the store, as a table, CSV or JSON.

The chargeback views (contrib/sql/README.md) are meant to be queried like
this. The query is untrusted text: it runs through
:func:`infermeter.store.readonly.run_untrusted`, which keeps it from changing
the store or reaching past it (on PostgreSQL it logs in as the reader role that
``infermeter db grant-reader`` makes) and stops it at the timeout, the row cap
or the memory cap; each refusal is one line and exit code 2.

The table shows stored labels through :mod:`infermeter.safe_text`: a control
character in a model name is shown, not sent to the terminal, and ``[bold]``
is text. CSV and JSON keep values verbatim; their quoting keeps them valid.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from infermeter.cli import App, cli, pass_app
from infermeter.safe_text import label
from infermeter.store.readonly import Limits, QueryResult, run_untrusted


@cli.command("sql")
@click.argument("query")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV (header first).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of objects.")
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    metavar="SECONDS",
    help="Stop the query after this long (default: sql.timeout_s, 10).",
)
@click.option(
    "--max-rows",
    type=int,
    metavar="N",
    help="Refuse a result of more rows (default: sql.max_rows, 100000).",
)
@click.option(
    "--role",
    metavar="NAME",
    help="PostgreSQL role to run as (default: sql.reader_role); it must only read.",
)
@pass_app
def sql(
    app: App,
    query: str,
    as_csv: bool,
    as_json: bool,
    timeout_s: float | None,
    max_rows: int | None,
    role: str | None,
) -> None:
    """Run the read-only SQL QUERY on the store and print its rows."""
    if as_csv and as_json:
        raise click.UsageError("choose one of --csv and --json")
    limits = Limits.from_config(app.config, timeout_s=timeout_s, max_rows=max_rows, role=role)
    result = run_untrusted(app.config.store_url, query, limits)
    if as_json:
        rows = [dict(zip(result.columns, map(_json_value, r), strict=True)) for r in result.rows]
        click.echo(json.dumps(rows, indent=2, allow_nan=False))
    elif as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(result.columns)
        writer.writerows([["" if v is None else _text(v) for v in r] for r in result.rows])
    else:
        _print_table(result)


def _text(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _json_value(value: Any) -> Any:
    # JSON has no NaN or infinity: those are strings, spelled as PostgreSQL does,
    # so that the output stays JSON that any parser reads.
    if isinstance(value, float | Decimal) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if value is None or isinstance(value, bool | int | float | str | dict | list):
        return value
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return _text(value)


def _print_table(result: QueryResult) -> None:
    # Piped, no terminal width applies: print whole values rather than fold them.
    console = Console()
    if not console.is_terminal:
        console = Console(width=1_000_000)
    if not result.columns:
        console.print("(no result)")
        return
    table = Table(box=None, pad_edge=False)
    for name in result.columns:
        table.add_column(label(name), overflow="fold")
    for row in result.rows:
        table.add_row(*(Text("NULL", style="dim") if v is None else label(_text(v)) for v in row))
    console.print(table)
    n = len(result.rows)
    console.print(Text(f"{n} row{'s' if n != 1 else ''}", style="dim"))
