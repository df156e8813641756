"""``infermeter run``: the daemon in the foreground."""

from __future__ import annotations

import click

from infermeter.cli import App, cli, pass_app
from infermeter.daemon import run_daemon


@cli.command()
@pass_app
def run(app: App) -> None:
    """Run the agent in the foreground until SIGTERM or Ctrl-C.

    Applies pending migrations, loads plugins, then ticks, flushes, rolls up,
    prunes and recommends on the periods of the [agent] config section.
    """
    app.setup_logging()
    code = run_daemon(app.config, app.pm)
    raise click.exceptions.Exit(code)
