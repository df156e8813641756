"""Alembic, driven from code: the agent migrates at start-up, the CLI wraps it.

The scripts live in the installed package, so no ``alembic.ini`` or source
tree is needed, and nothing is put on ``sys.path``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

import infermeter.migrations
from infermeter.errors import StoreError

# The folder of the installed ``infermeter.migrations`` package, found through
# the import system so that a wheel and an editable install both resolve it
# (``infermeter:migrations`` would look inside agent/ under an editable install).
SCRIPT_LOCATION = str(Path(infermeter.migrations.__file__).parent)


@dataclass(frozen=True, slots=True)
class Revision:
    revision: str
    down_revision: str | None
    doc: str
    is_head: bool
    is_current: bool


def alembic_config(engine: Engine) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    cfg.attributes["engine"] = engine
    return cfg


def script_directory() -> ScriptDirectory:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    return ScriptDirectory.from_config(cfg)


def head_revision() -> str | None:
    return script_directory().get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def check_schema_known(engine: Engine) -> str | None:
    """Refuse a database migrated by a newer infermeter: we would corrupt it."""
    current = current_revision(engine)
    if current is None:
        return None
    scripts = script_directory()
    known = {rev.revision for rev in scripts.walk_revisions()}
    if current not in known:
        raise StoreError(
            f"database schema is at revision {current}, newer than this infermeter "
            f"(its newest is {scripts.get_current_head()}); upgrade infermeter"
        )
    return current


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    check_schema_known(engine)
    command.upgrade(alembic_config(engine), revision)
    return current_revision(engine)


def downgrade(engine: Engine, revision: str) -> str | None:
    check_schema_known(engine)
    command.downgrade(alembic_config(engine), revision)
    return current_revision(engine)


def needs_upgrade(engine: Engine) -> bool:
    return check_schema_known(engine) != head_revision()


def history(engine: Engine | None = None) -> list[Revision]:
    current = current_revision(engine) if engine is not None else None
    head = head_revision()
    return [
        Revision(
            revision=rev.revision,
            down_revision=rev.down_revision if isinstance(rev.down_revision, str) else None,
            doc=rev.doc or "",
            is_head=rev.revision == head,
            is_current=rev.revision == current,
        )
        for rev in script_directory().walk_revisions()
    ]
