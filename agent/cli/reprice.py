"""``infermeter reprice``: price stored rows again with the config's current card.

See infermeter.price.reprice for what is recomputed and why a changed card needs a
new version. It writes while an agent may be writing too: each chunk of
time is its own short transaction, so the agent is never held up for long.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import click

from infermeter.cli import App, cli, pass_app
from infermeter.cli._progress import progress
from infermeter.cli._time import WHEN, Duration, resolve
from infermeter.errors import ConfigError, StoreError
from infermeter.price.pricing import card_or_none
from infermeter.price.reprice import RepriceResult, Sums, reprice
from infermeter.safe_text import printable
from infermeter.sidecar.daemon import open_store
from infermeter.store.engine import sqlite_path


@cli.command("reprice")
@click.option(
    "--since",
    required=True,
    type=WHEN,
    metavar="WHEN",
    help="From when: a duration ago (24h, 7d, 2w), a UTC date/time (2026-11-01) or epoch s.",
)
@click.option(
    "--until", type=WHEN, metavar="WHEN", help="Up to when (default: everything after --since)."
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@pass_app
def reprice_cmd(
    app: App, since: Duration | float, until: Duration | float | None, no_progress: bool
) -> None:
    """Recompute the costs and carbon of stored shares and calls with the current card."""
    now = time.time()
    t_since = resolve(since, now)
    t_until = resolve(until, now) if until is not None else None
    if t_until is not None and t_until <= t_since:
        raise ConfigError("--until must be later than --since")
    card = card_or_none(app.config)
    if card is None:
        raise ConfigError("no price card: the pricing plugin is disabled or [prices] is missing")
    path = sqlite_path(app.config.store_url)
    if path is not None and not path.is_file():
        raise StoreError(f"no store at {path}")
    store, _ = open_store(app.config, lock=False)
    try:
        with progress("repricing", enabled=not no_progress) as bar:
            result = reprice(
                store.engine,
                card,
                app.pm,
                t_since,
                t_until,
                progress=bar,
                now=now,
            )
    finally:
        store.close()
    for line in summary(result, card.currency):
        click.echo(printable(line))  # host names and card versions are stored text


def _when(t: float | None) -> str:
    if t is None:
        return "now"
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _change(name: str, before: float, after: float, unit: str) -> str:
    return f"  {name:<14}{before:.6f} -> {after:.6f} {unit}"


def summary(r: RepriceResult, currency: str) -> list[str]:
    """What changed, in a few lines."""
    if not r.shares and not r.calls:
        return [f"nothing to reprice from {_when(r.since)} to {_when(r.until)}"]
    previous = ", ".join(f"{v} x{n}" for v, n in sorted(r.previous_cards.items()))
    lines = [
        f"repriced {r.shares} shares and {r.calls} calls from {_when(r.since)} to "
        f"{_when(r.until)} on {', '.join(r.hosts)} with card {r.card_version} "
        f"(rows were priced by: {previous})"
    ]
    for label, before, after in (
        ("shares", r.shares_before, r.shares_after),
        ("calls", r.calls_before, r.calls_after),
    ):
        lines.append(f"{label}:")
        lines.extend(_sums(before, after, currency))
    lines.append(f"hourly rollups rebuilt for {r.hours_rolled_up} hours")
    if r.hours_kept:
        kept = ", ".join(_when(h) for h in r.hours_kept)
        lines.append(f"kept the rollups of hours whose raw shares were pruned: {kept}")
    return lines


def _sums(before: Sums, after: Sums, currency: str) -> list[str]:
    return [
        _change("energy cost", before.energy_cost, after.energy_cost, currency),
        _change("capacity cost", before.capacity_cost, after.capacity_cost, currency),
        _change("carbon", before.carbon_g, after.carbon_g, "gCO2e"),
        f"  {'unpriced rows':<14}{before.unpriced} -> {after.unpriced}",
    ]
