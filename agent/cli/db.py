"""``infermeter db``: the store's schema, through Alembic, and its reader role."""

from __future__ import annotations

import click

from infermeter.cli import App, cli, pass_app
from infermeter.store import migrate
from infermeter.store.engine import open_engine, redact
from infermeter.store.readonly import Limits


@cli.group()
def db() -> None:
    """Inspect and migrate the store's schema."""


@db.command()
@click.argument("revision", default="head")
@pass_app
def upgrade(app: App, revision: str) -> None:
    """Apply migrations up to REVISION (default: head)."""
    url = app.config.store_url
    engine = open_engine(url, create_dir=_is_default(app))
    try:
        before = migrate.current_revision(engine)
        after = migrate.upgrade(engine, revision)
    finally:
        engine.dispose()
    click.echo(f"{redact(url)}: {before or 'empty'} -> {after or 'empty'}")


@db.command()
@click.argument("revision")
@pass_app
def downgrade(app: App, revision: str) -> None:
    """Revert migrations down to REVISION ('base' empties the store)."""
    engine = open_engine(app.config.store_url)
    try:
        before = migrate.current_revision(engine)
        after = migrate.downgrade(engine, revision)
    finally:
        engine.dispose()
    click.echo(f"{redact(app.config.store_url)}: {before or 'empty'} -> {after or 'empty'}")


@db.command()
@pass_app
def current(app: App) -> None:
    """Print the store's schema revision, and whether it is the newest."""
    engine = open_engine(app.config.store_url)
    try:
        rev = migrate.check_schema_known(engine)
    finally:
        engine.dispose()
    head = migrate.head_revision()
    state = "(head)" if rev == head else f"(behind; head is {head})"
    click.echo(f"{rev or 'empty'} {state}")


@db.command()
@pass_app
def history(app: App) -> None:
    """List the migrations, newest first, marking the store's current one."""
    engine = open_engine(app.config.store_url)
    try:
        revisions = migrate.history(engine)
    finally:
        engine.dispose()
    for r in revisions:
        marks = " ".join(m for m, on in (("(head)", r.is_head), ("(current)", r.is_current)) if on)
        click.echo(f"{r.down_revision or '<base>'} -> {r.revision} {marks}".rstrip() + f", {r.doc}")


@db.command("grant-reader")
@click.option("--role", metavar="NAME", help="Role to create or update (default: sql.reader_role).")
@pass_app
def grant_reader(app: App, role: str | None) -> None:
    """Create the PostgreSQL role `sql` logs in as: it may read the store, nothing else.

    Run it with the store owner's URL, and again after an upgrade; it is
    idempotent. The role logs in without a password of its own: give it one
    (ALTER ROLE ... PASSWORD) for $PGPASSWORD or ~/.pgpass, or a pg_hba.conf rule.
    """
    from infermeter.safe_text import printable
    from infermeter.store.reader_role import grant_reader as grant

    limits = Limits.from_config(app.config, role=role)
    g = grant(app.config.store_url, limits)
    revoked = f"; revoked {printable(', '.join(g.revoked))}" if g.revoked else ""
    click.echo(
        f"{printable(g.role)} ({'created' if g.created else 'updated'}) may read "
        f"{g.readable} tables and views of {printable(g.database)}.{printable(g.schema)} "
        f"and nothing else; statement timeout {limits.timeout_s:g} s{revoked}"
    )
    if g.login_problem:
        click.echo(f"infermeter: warning: {g.login_problem}", err=True)


def _is_default(app: App) -> bool:
    return not app.config["store.url"]
