"""``infermeter prices``: the price card in effect, and where each value came from.

Every stored cost names the card version that priced it, so before trusting
a report one wants to see the card: electricity (and its time-of-use
periods), PUE, grid carbon intensity, the device rates with their basis
(a cloud price or an amortised purchase) and the CPU core-hour, each with
its source as ``infermeter config show`` reports it (default, a file, the
environment, an option). A value the card leaves unknown is "unknown: not
priced", never 0.
"""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from infermeter.cli import App, cli, pass_app
from infermeter.config import Config
from infermeter.price.pricing import card_or_none
from infermeter.records import PriceCard, TimeOfUse
from infermeter.safe_text import label, printable

PRICING_PLUGIN = "core.pricing"
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def days_text(days: frozenset[int]) -> str:
    """0-6 (Monday 0) as 'Mon-Fri', 'every day', or 'Mon, Wed'."""
    ordered = sorted(days)
    if ordered == list(range(7)):
        return "every day"
    if ordered and ordered == list(range(ordered[0], ordered[-1] + 1)) and len(ordered) > 2:
        return f"{_DAYS[ordered[0]]}-{_DAYS[ordered[-1]]}"
    return ", ".join(_DAYS[d] for d in ordered)


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def period_text(p: TimeOfUse, currency: str) -> str:
    return (
        f"{days_text(p.days)} {_hhmm(p.start_min)}-{_hhmm(p.end_min)}: {p.per_kwh:g} {currency}/kWh"
    )


def card_rows(card: PriceCard, config: Config) -> list[tuple[str, str, str]]:
    """(what, value, source) for every figure on the card, in reading order."""
    src = config.sources
    cur = card.currency

    def known(value: float | None, unit: str) -> str:
        return f"{value:g} {unit}" if value is not None else "unknown: not priced"

    rows = [
        ("version", card.version, src["prices.version"]),
        ("currency", cur, src["prices.currency"]),
        ("timezone", card.timezone, src["prices.timezone"]),
        (
            "electricity",
            known(card.electricity_per_kwh, f"{cur}/kWh"),
            src["prices.electricity_per_kwh"],
        ),
    ]
    for period in card.time_of_use:
        rows.append(("  time of use", period_text(period, cur), src["prices.time_of_use"]))
    if not card.time_of_use:
        rows.append(("  time of use", "none (one price at all hours)", src["prices.time_of_use"]))
    rows += [
        ("PUE", f"{card.pue:g}", src["prices.pue"]),
        (
            "carbon intensity",
            known(card.carbon_g_per_kwh, "gCO2e/kWh"),
            src["prices.carbon_g_per_kwh"],
        ),
        (
            "CPU core-hour",
            known(card.cpu_core_hour, f"{cur}/vCPU-hour"),
            src["prices.cpu_core_hour"],
        ),
    ]
    raw = card.body.get("devices", {})
    for rate in card.device_rates:
        how = "cloud price"
        table = raw.get(rate.pattern, {}) if isinstance(raw, dict) else {}
        if rate.basis == "amortised":
            years = table.get("years", 4)
            upkeep = table.get("upkeep_per_year", 0)
            how = f"amortised: {table.get('purchase')} over {years} y + {upkeep}/y upkeep"
        rows.append(
            (
                f"device /{rate.pattern}/",
                f"{rate.hourly:.4g} {cur}/hour ({how})",
                src["prices.devices"],
            )
        )
    if not card.device_rates:
        rows.append(("devices", "none: GPU capacity not priced", src["prices.devices"]))
    return rows


def card_json(card: PriceCard, config: Config) -> dict[str, Any]:
    src = config.sources
    return {
        "version": card.version,
        "digest": card.digest,
        "currency": card.currency,
        "timezone": card.timezone,
        "electricity_per_kwh": card.electricity_per_kwh,
        "time_of_use": [
            {
                "days": sorted(p.days),
                "start": _hhmm(p.start_min),
                "end": _hhmm(p.end_min),
                "per_kwh": p.per_kwh,
            }
            for p in card.time_of_use
        ],
        "pue": card.pue,
        "carbon_g_per_kwh": card.carbon_g_per_kwh,
        "cpu_core_hour": card.cpu_core_hour,
        "devices": [
            {"pattern": r.pattern, "hourly": r.hourly, "basis": r.basis} for r in card.device_rates
        ],
        "sources": {
            k.removeprefix("prices."): v for k, v in src.items() if k.startswith("prices.")
        },
    }


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_app
def prices(app: App, as_json: bool) -> None:
    """The price card in effect, and where each of its values came from."""
    config = app.config
    card = None if app.pm.is_blocked(PRICING_PLUGIN) else card_or_none(config)
    if card is None:
        click.echo(
            "no price card: the pricing plugin (core.pricing) is disabled; costs are unpriced"
        )
        return
    if as_json:
        click.echo(json.dumps(card_json(card, config), indent=2))
        return
    # The card's words (version, currency, device patterns, the file's path) are
    # text, never markup: a pattern like "A100[a-z]*" is shown as written.
    console = Console()
    console.print(
        Text.assemble(
            "price card ",
            (printable(card.version), "bold"),
            f" ({printable(card.currency)}), digest {card.digest}\n",
            f"config file: {printable(config.path or 'none (built-in defaults)')}",
        ),
        highlight=False,
        soft_wrap=True,  # a long path stays whole, to be copied
    )
    table = Table("price", "value", "source", box=None, pad_edge=False)
    table.columns[1].overflow = "fold"
    in_file = f"file {config.path}"
    for what, value, source in card_rows(card, config):
        table.add_row(*map(label, (what, value, "config file" if source == in_file else source)))
    console.print(table)
    console.print(
        "cost = kWh x PUE x electricity + rate x hours; carbon = kWh x PUE x intensity",
        style="dim",
        highlight=False,
    )
