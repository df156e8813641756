"""``infermeter report``: what inference cost, per model, tenant, target, device or host.

The numbers come from infermeter.report.build (pure data); this module only
parses the options and renders: rich tables that fit 80 columns (no colour
when the output is not a terminal), ``--json`` (docs/report.json.md) or
``--csv``. Money the price card could not price is printed "unpriced",
never 0; a figure that leaves some energy unpriced carries a "*".
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime

import click
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text
from sqlalchemy import Connection, Engine

from infermeter.cli import App, cli, pass_app
from infermeter.cli._time import DURATION, POINT, Duration
from infermeter.csv_out import RowWriter
from infermeter.errors import StoreError
from infermeter.report.build import GROUPINGS, Amount, Report, build_report
from infermeter.report.render import CSV_COLUMNS, csv_rows, report_json
from infermeter.safe_text import label, printable
from infermeter.store import migrate
from infermeter.store.engine import open_engine, redact, sqlite_path

DEFAULT_SINCE = Duration(86400.0, "h")
_SYMBOL = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥"}


# ----- options ------------------------------------------------------------------


def time_range(
    since: Duration | None, t_from: float | None, t_to: float | None, now: float
) -> tuple[float, float]:
    """The report's [start, end): --since counts back from --to (default now, 24h)."""
    if since is not None and t_from is not None:
        raise click.UsageError("give --since or --from, not both")
    end = t_to if t_to is not None else now
    start = t_from if t_from is not None else (since or DEFAULT_SINCE).start_before(end)
    if start >= end:
        raise click.UsageError("the range is empty: --from must be before --to")
    return start, end


@contextmanager
def reading(url: str) -> Iterator[Connection]:
    """A connection to an existing, current store for a read-only command; one line if not."""
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise StoreError(f"no store at {path}")
    engine = open_for_reading(url)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def open_for_reading(url: str) -> Engine:
    """The store's engine, refusing an empty or out-of-date schema in one line."""
    engine = open_engine(url)
    rev = migrate.check_schema_known(engine)
    if rev is None:
        engine.dispose()
        raise StoreError(
            f"store {redact(url)} is empty: run the agent (infermeter run) or infermeter replay"
        )
    if rev != migrate.head_revision():
        engine.dispose()
        raise StoreError(
            f"store {redact(url)} is at schema {rev}, older than this infermeter's "
            f"{migrate.head_revision()}: run infermeter db upgrade (or restart the agent)"
        )
    return engine


# ----- formatting ---------------------------------------------------------------


def sig(x: float, digits: int = 3) -> str:
    """A number with ``digits`` significant figures, thousands separated, short exponents."""
    if x == 0:
        return "0"
    if abs(x) >= 10**digits:
        return f"{x:,.0f}"
    if abs(x) >= 1e-3:
        return f"{x:.{digits}g}"
    return re.sub(r"e([+-])0*(\d)", r"e\1\2", f"{x:.{max(1, digits - 1)}e}")


def money(a: Amount | None, currency: str | None, digits: int = 3) -> str:
    """'unpriced' when nothing is priced; a '*' when some energy was left unpriced."""
    if a is None:
        return "-"
    if a.value is None:
        return "unpriced"
    code = printable(currency or "")  # a stored card's currency: never a control character
    symbol = _SYMBOL.get(code, f"{code} " if code and code != "mixed" else "")
    text = f"{symbol}{sig(a.value, digits)}"
    return text + "*" if a.unpriced_kwh > 0 else text


def share(x: float | None) -> str:
    if x is None:
        return "-"
    if 0 < x < 0.005:
        return "<1%"
    return f"{x:.0%}"


def parts(fractions: Mapping[str, float]) -> str:
    """'sm-util 80%, equal 20%': the keys are the plugins' words, printable."""
    ranked = sorted(fractions.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{printable(k)} {share(v)}" for k, v in ranked)


def when(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%M")


def span(seconds: float) -> str:
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


# ----- rendering ------------------------------------------------------------------
#
# Everything below prints stored text (labels, card versions, advice), which
# the inference processes and plugins wrote: every table cell is a
# ``safe_text.label`` (a Text, so never read as rich markup, with control
# characters shown as escapes), and stored words inside a line of our own are
# ``printable`` pieces of a Text.


def render(report: Report) -> Group:
    """The report as rich renderables, 80 columns wide at most."""
    cur = report.currency
    t = report.totals
    idle_mode = (
        "idle and keep-warm spread over the groups that used each device"
        if report.share_idle and report.by not in ("device", "host")
        else "idle and keep-warm in their own rows"
        if report.by not in ("device", "host")
        else "idle and keep-warm within each " + report.by
    )
    cards = ", ".join(printable(c) for c in report.price_cards) or "none"
    head = Text.assemble(
        ("infermeter report", "bold"),
        f" by {report.by}, {when(report.t_from)} to {when(report.t_to)} UTC "
        f"({span(report.t_to - report.t_from)})\n",
        f"price card {cards}" + (f" ({printable(cur)})" if cur else "") + f"; {idle_mode}",
    )
    if report.empty:
        hint = "nothing stored yet"
        if report.stored:
            hint = f"the store holds {when(report.stored[0])} to {when(report.stored[1])} UTC"
        return Group(head, Text(f"\nNo data in this range ({hint})."))
    req = report.total_requests
    summary = Table.grid(padding=(0, 2))
    for _ in range(4):
        summary.add_column(no_wrap=True)
    rows = (
        ("Energy", f"{sig(t.energy_kwh)} kWh", "Cost", money(t.cost, cur, 4)),
        (
            "Carbon",
            "unpriced" if t.carbon_g.value is None else f"{sig(t.carbon_g.value)} g CO2e",
            "  energy + capacity",
            f"{money(t.energy_cost, cur)} + {money(t.capacity_cost, cur)}",
        ),
        ("Requests", f"{req.requests:,}", "  of which idle", money(t.idle_cost, cur)),
        (
            "Utilisation",
            share(report.utilisation),
            "  of which keep-warm",
            money(t.keepwarm_cost, cur),
        ),
    )
    for row in rows:  # the card's currency is in the money: text, never markup
        summary.add_row(*map(label, row))
    how = Text(
        f"Energy {parts(report.methods)}; split among processes by {parts(report.bases) or '-'}"
    )
    parts_: list[RenderableType] = [head, Text(""), summary, how, Text(""), cost_table(report)]
    if report.by != "device":  # requests belong to no single device
        parts_ += [Text(""), _request_table(report)]
    parts_ += [Text(""), _method_table(report), Text(""), _recommendations(report)]
    return Group(*parts_, *_footnotes(report))


def _label_column(table: Table, by: str) -> None:
    table.add_column(by, overflow="fold", min_width=10, max_width=24)


def cost_table(report: Report) -> Table:
    cur = report.currency
    total = report.totals.cost.value
    table = Table(title=f"Cost by {report.by}", title_justify="left", box=None, pad_edge=False)
    _label_column(table, report.by)
    for name in ("kWh", "cost", "share", "idle", "keep-warm", "carbon g"):
        table.add_column(name, justify="right", no_wrap=True)
    for g in report.groups:
        c = g.costs
        part = c.cost.value / total if c.cost.value is not None and total else None
        cells = (
            g.label,
            sig(c.energy_kwh),
            money(c.cost, cur),
            share(part),
            money(c.idle_cost, cur) if c.idle_cost.value else "-",
            money(c.keepwarm_cost, cur) if c.keepwarm_cost.value else "-",
            "unpriced" if c.carbon_g.value is None else sig(c.carbon_g.value),
        )
        table.add_row(*map(label, cells))
    return table


def _request_table(report: Report) -> Table:
    cur = report.currency
    table = Table(
        title=f"Requests by {report.by} (p50/p95: cost per request)",
        title_justify="left",
        box=None,
        pad_edge=False,
    )
    _label_column(table, report.by)
    tokens = any(g.j_per_token is not None for g in report.groups)
    names = ["requests", "items", "J/item", "per 1k req", "p50", "p95", "util"]
    if tokens:  # only where some group counted tokens: the table stays narrow otherwise
        names[3:3] = ["J/token", "per 1M in", "per 1M out"]
    for name in names:
        table.add_column(name, justify="right", no_wrap=True)
    for g in report.groups:
        s = g.requests
        if s is None or (g.kind != "group" and not s.requests):
            continue
        token_cells = (
            "-" if g.j_per_token is None else sig(g.j_per_token),
            money(g.cost_per_1m_tokens_in, cur),
            money(g.cost_per_1m_tokens_out, cur),
        )
        cells = (
            g.label,
            f"{s.requests:,}",
            f"{s.items:,}",
            "-" if g.j_per_item is None else sig(g.j_per_item),
            *(token_cells if tokens else ()),
            money(g.cost_per_1k_requests, cur),
            _per_request(s.cost_p50, s.requests, s.unpriced, cur),
            _per_request(s.cost_p95, s.requests, s.unpriced, cur),
            share(g.utilisation),
        )
        table.add_row(*map(label, cells))
    return table


def _per_request(value: float | None, requests: int, unpriced: int, cur: str | None) -> str:
    if value is None:
        return "unpriced" if unpriced else "-"
    return money(Amount(value), cur, 2)


def _method_table(report: Report) -> Table:
    table = Table(
        title="How it was measured (share of energy) and split among processes",
        title_justify="left",
        box=None,
        pad_edge=False,
    )
    _label_column(table, report.by)
    for name in ("measured", "integr.", "estim."):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("split by", overflow="fold")
    if report.by == "device":
        table.add_column("util", justify="right", no_wrap=True)
    for g in report.groups:
        row = [
            g.label,
            share(g.methods.get("measured", 0.0)) if g.methods else "-",
            share(g.methods.get("integrated", 0.0)) if g.methods else "-",
            share(g.methods.get("estimated", 0.0)) if g.methods else "-",
            parts(g.bases) or "-",
        ]
        if report.by == "device":
            row.append(share(g.utilisation))
        table.add_row(*map(label, row))
    return table


def _recommendations(report: Report) -> RenderableType:
    title = Text("Top recommendations", style="bold")
    if not report.recommendations:
        return Group(title, Text("  none open"))
    grid = Table.grid(padding=(0, 1))
    grid.add_column(justify="right", no_wrap=True)
    grid.add_column(overflow="fold")
    for i, r in enumerate(report.recommendations, 1):
        what = Text(
            f"{printable(r.kind)} {printable(r.subject)} ({printable(r.subject_kind)}): "
            f"saves ${sig(r.savings_usd_month)}/month, "
            f"{sig(r.savings_kwh_month)} kWh, {sig(r.savings_kgco2e_month)} kg CO2e "
            f"(confidence {printable(r.confidence)})"
        )
        what.append(f"\n{printable(r.how_to_apply)}", style="dim")
        grid.add_row(f"{i}.", what)
    return Group(title, grid)


def _footnotes(report: Report) -> list[Text]:
    notes = []
    if report.totals.cost.unpriced_kwh > 0 or report.totals.carbon_g.unpriced_kwh > 0:
        notes.append(
            f"* leaves out {sig(report.totals.cost.unpriced_kwh)} kWh that the price card "
            "could not price"
        )
    if report.served_active_j > 0:
        carried = min(1.0, report.request_energy_j / report.served_active_j)
        notes.append(
            f"requests carry {carried:.1%} of the active energy of what served them; "
            f"{sig(report.overhead_j / 3.6e6)} kWh is overhead: intervals in which a process "
            "drew energy with no request in flight (loading, warm-up, work outside requests)"
        )
    notes.append(
        "p50/p95 within 4.4% (log histogram); util: busy fraction of the devices used, "
        "weighted by energy"
    )
    return [Text(""), *(Text(n, style="dim") for n in notes)]


# ----- the command ------------------------------------------------------------------


@cli.command()
@click.option(
    "--since",
    type=DURATION,
    metavar="DURATION",
    help="How far back from --to: 90m, 24h, 7d (default 24h); h, d and w start on the hour.",
)
@click.option(
    "--from",
    "t_from",
    type=POINT,
    metavar="TIME",
    help="Start: ISO 8601 (UTC unless an offset) or epoch s.",
)
@click.option("--to", "t_to", type=POINT, metavar="TIME", help="End (default: now).")
@click.option("--by", type=click.Choice(GROUPINGS), default="model", show_default=True)
@click.option("--share-idle", is_flag=True, help="Spread idle and keep-warm over the groups.")
@click.option("--json", "as_json", is_flag=True, help="JSON (docs/report.json.md).")
@click.option("--csv", "as_csv", is_flag=True, help="CSV, one row per group.")
@click.option(
    "--top", "top_n", type=int, default=5, show_default=True, help="Recommendations shown."
)
@pass_app
def report(
    app: App,
    since: Duration | None,
    t_from: float | None,
    t_to: float | None,
    by: str,
    share_idle: bool,
    as_json: bool,
    as_csv: bool,
    top_n: int,
) -> None:
    """Energy, cost and carbon per model, tenant, target, device or host."""
    if as_json and as_csv:
        raise click.UsageError("give --json or --csv, not both")
    start, end = time_range(since, t_from, t_to, time.time())
    engine = open_for_reading(app.config.store_url)
    try:
        data = build_report(engine, start, end, by, share_idle, top_recommendations=top_n)
    finally:
        engine.dispose()
    if as_json:
        # ensure_ascii (the default): a control character in a label goes out as
        # a \u escape, never raw, and json.loads gives back the very string.
        click.echo(json.dumps(report_json(data), indent=2))
    elif as_csv:
        writer = RowWriter(sys.stdout)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(csv_rows(data))
    else:
        Console().print(render(data))
