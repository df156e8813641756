"""``infermeter demo``: a real agent, a real CPU model, the H100 recording, then the report.

The work is in infermeter.sidecar.demo; this shows where it is (on stderr, with a
progress bar when stderr is a terminal) and ends with the report: by model,
then by tenant, with the recommendations.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import click
from rich.console import Console

from infermeter.cli import cli
from infermeter.cli._progress import progress
from infermeter.cli.report import cost_table, render
from infermeter.report.build import build_report
from infermeter.safe_text import label, printable
from infermeter.sidecar.demo import run_demo
from infermeter.store.engine import open_engine


@cli.command()
@click.option(
    "--seconds", type=float, default=30.0, show_default=True, help="How long the CPU model serves."
)
@click.option(
    "--keep",
    "keep_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Keep the demo's store (and agent log) in this new folder instead of a temporary one.",
)
def demo(seconds: float, keep_dir: Path | None) -> None:
    """See infermeter work on this machine in about half a minute, GPU or not.

    Starts the agent on a temporary store, serves a small model on the CPU
    to two tenants under `infermeter exec`, replays a recorded H100 serving
    three models into the same store, and prints the report.
    """
    if seconds <= 0:
        raise click.BadParameter("must be > 0", param_hint="--seconds")
    if keep_dir is not None and keep_dir.exists() and any(keep_dir.iterdir()):
        raise click.BadParameter(f"{keep_dir} is not empty", param_hint="--keep")
    err = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="infermeter-demo-") as tmp:
        folder = keep_dir or Path(tmp)
        with progress("demo", console=err) as bar:

            def status(message: str) -> None:
                bar.describe(message)
                if not err.is_terminal:
                    err.print(label(f"infermeter demo: {message}"), highlight=False)

            result = run_demo(folder, seconds, status, bar)
        engine = open_engine(result.store_url)
        try:
            by_model = build_report(engine, result.t_from, result.t_to, "model")
            by_tenant = build_report(
                engine, result.t_from, result.t_to, "tenant", top_recommendations=0
            )
        finally:
            engine.dispose()
    out = Console()
    sent = ", ".join(f"{n} from {t}" for t, n in result.requests.items())
    out.print(
        label(
            f"Served demo-mlp with {result.runtime} on this machine's CPU ({sent}); "
            f"replayed an H100 serving three models as host {result.h100_host}."
        ),
        highlight=False,
    )
    out.print()
    out.print(render(by_model))
    out.print()
    out.print(cost_table(by_tenant))  # who to charge
    if keep_dir is not None:
        out.print(
            "\nThe store is kept: "
            + printable(
                f"infermeter --db {result.store_url} report "
                f"--from {int(result.t_from)} --to {int(result.t_to) + 1}"
            ),
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
