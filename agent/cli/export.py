"""``infermeter export focus``: one UTC month of the store as a FOCUS 1.2 dataset.

CSV goes to stdout by default so the export pipes into any loader; the one
summary line goes to stderr then, never into the data. The mapping is
documented in infermeter.export.focus and contrib/sql/README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from infermeter.cli import App, cli, pass_app
from infermeter.cli._progress import progress
from infermeter.errors import InfermeterError, StoreError
from infermeter.export import focus
from infermeter.safe_text import printable
from infermeter.store import migrate
from infermeter.store.engine import open_engine, redact, sqlite_path


@cli.group()
def export() -> None:
    """Export the store's costs in standard formats."""


@export.command("focus")
@click.option("--month", required=True, metavar="YYYY-MM", help="UTC calendar month to export.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this .csv or .parquet file instead of CSV on stdout.",
)
@click.option(
    "--provider",
    default="infermeter",
    show_default=True,
    help="ProviderName, PublisherName and InvoiceIssuerName: who runs the hardware.",
)
@click.option(
    "--billing-account",
    default="infermeter",
    show_default=True,
    help="BillingAccountId and BillingAccountName.",
)
@click.option("--currency", help="BillingCurrency (default: the stored price cards').")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@pass_app
def focus_cmd(
    app: App,
    month: str,
    out: Path | None,
    provider: str,
    billing_account: str,
    currency: str | None,
    no_progress: bool,
) -> None:
    """Write FOCUS 1.2 rows (hour x model x tenant) for one UTC month."""
    focus.parse_month(month)  # a bad month is refused before the store is opened
    if out is not None and out.suffix.lower() not in (".csv", ".parquet"):
        raise InfermeterError(f"--out must end in .csv or .parquet, not {out.name!r}")
    url = app.config.store_url
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise StoreError(f"no store at {path}")
    engine = open_engine(url)
    try:
        if migrate.check_schema_known(engine) is None:
            raise StoreError(f"store {redact(url)} has no schema yet: nothing to export")
        options = focus.ExportOptions(provider, billing_account, currency=currency)
        with progress(
            f"reading hourly rows of {month}", enabled=not no_progress, counted=True
        ) as bar:
            data = focus.build_export(
                engine,
                month,
                options,
                progress=bar.count,
            )
    finally:
        engine.dispose()
    if out is None:
        focus.write_csv(data, sys.stdout)
        sys.stdout.flush()
    elif out.suffix.lower() == ".parquet":
        focus.write_parquet(data, out)
    else:
        with out.open("w", newline="", encoding="utf-8") as f:
            focus.write_csv(data, f)
    t = data.totals()
    billed = (t.energy_cost or 0.0) + (t.capacity_cost or 0.0)
    unpriced = sum(int(r["x_UnpricedRows"]) for r in data.rows)
    where = f" to {out}" if out is not None else ""
    click.echo(
        f"exported {t.rows} FOCUS {focus.FOCUS_VERSION} rows for {month}{printable(where)}: "
        f"BilledCost {billed:.6f} {printable(data.currency)}, "
        f"{t.energy_j / focus.J_PER_KWH:.6f} kWh"
        + (f", {unpriced} hourly rows without a price" if unpriced else ""),
        err=out is None,
    )
