"""Alembic, driven from code: the agent migrates at start-up, the CLI wraps it.

The scripts live in the installed package, so no ``alembic.ini`` or source
tree is needed, and nothing is put on ``sys.path``. Alembic (and Mako with
it) costs the daemon ~11 MB of resident memory for its whole life, so the
everyday question "is the store at our newest revision?" is answered without
it: the store's revision is one SELECT, and ours are read from the version
files' ``revision =`` lines. Alembic is imported only to migrate or list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, inspect, text

import infermeter.migrations
from infermeter.errors import StoreError

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

# The folder of the installed ``infermeter.migrations`` package, found through
# the import system so that a wheel and an editable install both resolve it
# (``infermeter:migrations`` would look inside agent/ under an editable install).
SCRIPT_LOCATION = str(Path(infermeter.migrations.__file__).parent)
VERSION_TABLE = "alembic_version"
_REVISION_LINE = re.compile(
    r"^(down_revision|revision)\s*(?::[^=]*)?=\s*['\"]?([\w]+)['\"]?", re.MULTILINE
)


@dataclass(frozen=True, slots=True)
class Revision:
    revision: str
    down_revision: str | None
    doc: str
    is_head: bool
    is_current: bool


@cache
def known_revisions() -> tuple[frozenset[str], str | None]:
    """Every revision this infermeter ships, and its newest, from the files alone."""
    revisions: dict[str, str | None] = {}
    for path in (Path(SCRIPT_LOCATION) / "versions").glob("*.py"):
        fields: dict[str, str] = {
            m.group(1): m.group(2) for m in _REVISION_LINE.finditer(path.read_text())
        }
        if "revision" in fields:
            down = fields.get("down_revision")
            revisions[fields["revision"]] = None if down in (None, "None") else down
    downs = {d for d in revisions.values() if d}
    heads = [r for r in revisions if r not in downs]
    return frozenset(revisions), heads[0] if len(heads) == 1 else None


def head_revision() -> str | None:
    return known_revisions()[1]


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table(VERSION_TABLE):
            return None
        rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    return str(rows[0]) if rows else None


def check_schema_known(engine: Engine) -> str | None:
    """Refuse a database migrated by a newer infermeter: we would corrupt it."""
    current = current_revision(engine)
    if current is not None and current not in known_revisions()[0]:
        raise StoreError(
            f"database schema is at revision {current}, newer than this infermeter "
            f"(its newest is {head_revision()}); upgrade infermeter"
        )
    return current


def needs_upgrade(engine: Engine) -> bool:
    return check_schema_known(engine) != head_revision()


def alembic_config(engine: Engine) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    cfg.attributes["engine"] = engine
    return cfg


def script_directory() -> ScriptDirectory:
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    return ScriptDirectory.from_config(cfg)


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    from alembic import command

    check_schema_known(engine)
    command.upgrade(alembic_config(engine), revision)
    return current_revision(engine)


def downgrade(engine: Engine, revision: str) -> str | None:
    from alembic import command

    check_schema_known(engine)
    command.downgrade(alembic_config(engine), revision)
    return current_revision(engine)


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
