"""``infermeter config show``: the effective config and where each value came from."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from infermeter.cli import App, cli, pass_app
from infermeter.safe_text import label
from infermeter.store.engine import redact


@cli.group()
def config() -> None:
    """Show the effective configuration."""


@config.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_app
def show(app: App, as_json: bool) -> None:
    """Every key, its value and its source (default, file, environment, option)."""
    cfg = app.config
    if as_json:
        out = {
            "file": str(cfg.path) if cfg.path else None,
            "store": redact(cfg.store_url),
            "values": {
                k: {"value": cfg.values[k], "source": cfg.sources[k]} for k in sorted(cfg.values)
            },
        }
        click.echo(json.dumps(out, indent=2))
        return
    # Values are text, never markup: a value "[bold]x" is shown as written.
    console = Console()
    console.print(label(f"config file: {cfg.path or 'none (defaults)'}"))
    console.print(label(f"store: {redact(cfg.store_url)}"), highlight=False)
    table = Table("key", "value", "source", box=None, pad_edge=False)
    for key in sorted(cfg.values):
        table.add_row(*map(label, (key, json.dumps(cfg.values[key]), cfg.sources[key])))
    console.print(table)
