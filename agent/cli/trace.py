"""``infermeter record`` and ``infermeter replay``: traces in, traces out."""

from __future__ import annotations

from pathlib import Path

import click

from infermeter.cli import App, cli, pass_app
from infermeter.cli._progress import progress
from infermeter.safe_text import printable
from infermeter.sidecar.daemon import open_store
from infermeter.sidecar.record import record as record_trace
from infermeter.sidecar.replay import check_trace, trace_host
from infermeter.sidecar.replay import replay as replay_trace
from infermeter.sidecar.trace_check import TraceError, first
from infermeter.store.writer import Store


@cli.command()
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="New folder to write the trace into.",
)
@click.option("--seconds", type=float, default=30.0, show_default=True, help="How long to record.")
@pass_app
def record(app: App, out_dir: Path, seconds: float) -> None:
    """Record what the meters and discovery see, in the fixtures' format."""
    app.setup_logging()
    result = record_trace(out_dir, seconds, app.config, app.pm)
    click.echo(
        printable(
            f"recorded {result.seconds:.1f} s into {result.out_dir}: "
            f"recorders {', '.join(result.recorders) or 'none'}, {result.targets} targets, "
            f"files {', '.join(result.files)}"
        )
    )


@cli.command()
@click.argument("trace_dir", type=click.Path(path_type=Path))
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option(
    "--partial",
    is_flag=True,
    help="Replay a damaged trace's readable rows; each unreadable line is kept as a gap "
    "(quarantine table, source 'trace') and listed. Without it such a trace is refused.",
)
@pass_app
def replay(app: App, trace_dir: Path, no_progress: bool, partial: bool) -> None:
    """Run the whole agent over a recorded trace into the store.

    The trace is checked whole before the store is opened: a line that cannot
    be read refuses it with one line naming the file and line (exit 2).
    """
    app.setup_logging()
    if not trace_dir.is_dir():
        raise click.BadParameter(f"{trace_dir} is not a folder", param_hint="TRACE_DIR")
    problems = check_trace(trace_dir, app.pm)
    refused = first(problems)
    if refused is not None and not partial:
        raise TraceError(refused)
    store, lock = open_store(app.config, lock=True)
    store = Store(store.engine, trace_host(trace_dir))
    try:
        with progress(f"replaying {trace_dir.name}", enabled=not no_progress) as bar:
            result = replay_trace(
                trace_dir,
                app.config,
                app.pm,
                store,
                progress=bar,
                partial=partial,
                problems=problems,
            )
    finally:
        store.close()
        if lock is not None:
            lock.release()
    for gap in result.gaps:
        click.echo(printable(f"gap: {gap}; missing {gap.missing}"))
    gaps = f", {len(result.gaps)} gap(s) left out (--partial)" if result.gaps else ""
    click.echo(
        printable(  # the host name comes from the trace
            f"replayed {result.t_end - result.t_start:.1f} s of {trace_dir} as host {result.host}: "
            f"{result.ticks} ticks, {result.shares_written} shares, "
            f"meters {', '.join(result.meters)}, {len(result.targets)} targets{gaps}"
        )
    )
