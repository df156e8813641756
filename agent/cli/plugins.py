"""``infermeter plugins``: what is loaded, from which distribution, with which hooks."""

from __future__ import annotations

import json
from dataclasses import asdict

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from infermeter.cli import App, cli, pass_app
from infermeter.safe_text import label, printable


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_app
def plugins(app: App, as_json: bool) -> None:
    """List the loaded plugins and the hooks each implements."""
    _ = app.config  # applies plugins.disabled
    infos = app.pm.describe()
    if as_json:
        out = {
            "plugins": [asdict(i) for i in infos],
            "failed": [asdict(f) for f in app.pm.failures],
        }
        click.echo(json.dumps(out, indent=2))
        return
    # Third-party packages name themselves and word their errors: text, never markup.
    table = Table("name", "version", "distribution", "hooks", box=None, pad_edge=False)
    for i in infos:
        hooks = Text("\n".join(printable(h) for h in i.hooks))  # one hook a line
        table.add_row(*map(label, (i.name, i.version or "-", i.distribution or "-")), hooks)
    console = Console()
    console.print(table)
    for f in app.pm.failures:
        console.print(Text.assemble(("failed", "red"), printable(f" {f.name}: {f.error}")))
