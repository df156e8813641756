"""``infermeter sql``: one read-only query on the store, as a table, CSV or JSON.

The chargeback views (contrib/sql/README.md) are meant to be queried like
this; the store is opened so that the query cannot change it (see
infermeter.chargeback.run_readonly), and a statement that tries is refused
with exit code 2.
"""

from __future__ import annotations

import csv
import json
import sys
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from infermeter.chargeback import QueryResult, run_readonly
from infermeter.cli import App, cli, pass_app


@cli.command("sql")
@click.argument("query")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV (header first).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of objects.")
@pass_app
def sql(app: App, query: str, as_csv: bool, as_json: bool) -> None:
    """Run the read-only SQL QUERY on the store and print its rows."""
    if as_csv and as_json:
        raise click.UsageError("choose one of --csv and --json")
    result = run_readonly(app.config.store_url, query)
    if as_json:
        rows = [dict(zip(result.columns, map(_json_value, r), strict=True)) for r in result.rows]
        click.echo(json.dumps(rows, indent=2))
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
        table.add_column(escape(name), overflow="fold")
    for row in result.rows:
        table.add_row(*("[dim]NULL[/dim]" if v is None else escape(_text(v)) for v in row))
    console.print(table)
    n = len(result.rows)
    console.print(f"[dim]{n} row{'s' if n != 1 else ''}[/dim]")
