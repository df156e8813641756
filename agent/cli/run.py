"""``infermeter run``: the daemon in the foreground."""

from __future__ import annotations

import click

from infermeter.cli import App, cli, pass_app
from infermeter.sidecar.daemon import run_daemon


@cli.command()
@pass_app
def run(app: App) -> None:
    """Run the agent in the foreground until SIGTERM or Ctrl-C.

    Applies pending migrations, writes what a previous run spooled, loads
    plugins, then ticks, flushes, rolls up, prunes and recommends on the
    periods of the [agent] config section.

    Exit codes: 0 stopped with everything stored; 2 bad configuration or
    store; 3 the final flush could not write, its batches are spooled (see
    store.spool_dir) for the next start; 4 nor could the spool be written,
    the log says what was lost.
    """
    app.setup_logging()
    code = run_daemon(app.config, app.pm)
    raise click.exceptions.Exit(code)
