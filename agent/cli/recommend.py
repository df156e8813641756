"""``infermeter recommend`` and ``infermeter apply``: ranked advice, and acting on it with consent.

``recommend`` runs the recommenders over each host's newest window (as the
daemon's recommend job does), stores what they say, and lists the open
advice ranked by monthly saving: a rich table, or ``--json``. ``--dismiss
ID`` hides one for good (it stays dismissed when the same advice comes
back). ``apply ID`` explains what it would do; only ``--yes`` does it: for a
power cap that is setting the limit through NVML, for any other kind it is
marking the advice applied (the change itself is the operator's).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from infermeter.cli import App, cli, pass_app
from infermeter.cli._time import DURATION, Duration
from infermeter.price.pricing import card_or_none
from infermeter.recommend import run as recommend_step
from infermeter.recommend.stored import StoredRecommendation, find, listing, set_status
from infermeter.safe_text import label, printable
from infermeter.sidecar.daemon import open_store


def render(recs: Sequence[StoredRecommendation], console: Console) -> None:
    """The ranked table, then per advice its subject, why and how to apply it.

    The subject goes in the table only on a wide console: on 80 columns it
    would squeeze every figure into a fold, so it heads the advice's lines.
    Recommenders are plugins and subjects are stored labels: every cell is a
    ``safe_text.label`` and every text a printable piece of a Text, never markup.
    """
    if not recs:
        console.print("no recommendations: nothing measured suggests a change (or too little data)")
        return
    wide = console.width >= 120
    currency = printable(recs[0].recommendation.evidence.get("currency", "USD"))
    table = Table(
        title="Recommendations, ranked by saving per month",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("id", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    if wide:
        table.add_column("subject", overflow="fold")
    table.add_column(label(f"{currency}/month"), justify="right", no_wrap=True)
    table.add_column("range", justify="right", no_wrap=True)
    table.add_column("kWh", justify="right", no_wrap=True)
    table.add_column("kgCO2e", justify="right", no_wrap=True)
    table.add_column("confidence", no_wrap=True)
    for rank, stored in enumerate(recs, 1):
        r = stored.recommendation
        s = r.savings
        status = "" if stored.status == "open" else f" ({stored.status})"
        cells = [str(rank), stored.stable_id[:8], r.kind + status]
        if wide:
            cells.append(r.subject)
        cells += [
            f"{s.usd:,.2f}",
            f"{s.usd_low:,.0f}-{s.usd_high:,.0f}",
            f"{s.kwh:,.1f}",
            f"{s.kgco2e:,.1f}",
            r.confidence,
        ]
        table.add_row(*map(label, cells))
    console.print(table)
    for stored in recs:
        r = stored.recommendation
        console.print(
            Text.assemble(
                (printable(stored.stable_id[:8]), "bold"),
                f" {printable(r.kind)} on {printable(r.subject)}",
            )
        )
        console.print(label(f"  why: {r.confidence} confidence, {r.confidence_reason}"))
        console.print(label(f"  how: {r.how_to_apply}"))
    console.print(label(recs[0].recommendation.evidence.get("extrapolation", ""), style="dim"))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="JSON: every field and the evidence.")
@click.option(
    "--dismiss", metavar="ID", help="Dismiss one recommendation (id or its first 4+ characters)."
)
@click.option("--all", "show_all", is_flag=True, help="Also list dismissed and applied advice.")
@click.option("--host", help="Only this host (default: every host in the store).")
@click.option(
    "--window",
    type=DURATION,
    metavar="DURATION",
    help="Window to judge, e.g. 24h (default: recommend.window_s).",
)
@click.option(
    "--no-refresh", is_flag=True, help="List what is stored; do not run the recommenders."
)
@pass_app
def recommend(
    app: App,
    as_json: bool,
    dismiss: str | None,
    show_all: bool,
    host: str | None,
    window: Duration | None,
    no_refresh: bool,
) -> None:
    """Ranked changes that would save money, each with its evidence."""
    app.setup_logging()
    store, _ = open_store(app.config, lock=False)
    engine = store.engine
    try:
        if dismiss is not None:
            done = set_status(engine, dismiss, "dismissed")
            r = done.recommendation
            click.echo(printable(f"dismissed {done.stable_id} ({r.kind} on {r.subject})"))
            return
        config = app.config
        if window is not None:
            config = replace(config, values={**config.values, "recommend.window_s": window.seconds})
        if not no_refresh:
            card = card_or_none(config)
            for name in [host] if host else recommend_step.hosts(engine):
                recommend_step.run(engine, name, config, app.pm, card)
        statuses = ("open", "dismissed", "applied") if show_all else ("open",)
        recs = listing(engine, statuses, host=host)
    finally:
        store.close()
    if as_json:
        # ensure_ascii (the default): control characters go out as \u escapes.
        click.echo(json.dumps([r.as_json() for r in recs], indent=2, default=str))
        return
    render(recs, Console(highlight=False))


@cli.command("apply")
@click.argument("ident", metavar="ID")
@click.option("--yes", is_flag=True, help="Consent: make the change now.")
@pass_app
def apply_cmd(app: App, ident: str, yes: bool) -> None:
    """Apply one recommendation; without --yes, only say what would be done.

    Advice a plugin can carry out (a power cap, set through NVML on this host:
    it needs root and the GPU the advice names) is done by that plugin's
    infermeter_apply; any other kind is the operator's change, and --yes
    marks it applied.
    """
    app.setup_logging()
    store, _ = open_store(app.config, lock=False)
    engine = store.engine
    try:
        stored = find(engine, ident)
        r = stored.recommendation
        done = app.pm.hook.infermeter_apply(recommendation=r, config=app.config, dry_run=not yes)
        if done is not None:  # a plugin carries this advice out (or says what it would do)
            if yes:
                set_status(engine, stored.stable_id, "applied")
                done = f"{done}; {stored.stable_id} applied"
            click.echo(printable(done))
            return
        if not yes:
            click.echo(printable(f"{r.kind} on {r.subject}: {r.how_to_apply}"))
            click.echo("This change is yours to make; rerun with --yes to mark it applied.")
            return
        set_status(engine, stored.stable_id, "applied")
        click.echo(printable(f"marked {stored.stable_id} applied ({r.kind} on {r.subject})"))
    finally:
        store.close()
