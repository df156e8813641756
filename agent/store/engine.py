"""Opening a store: one engine per URL, SQLite tuned for a single writer.

SQLite runs in WAL mode with ``synchronous=NORMAL``: a committed flush
survives the agent being killed, and readers (``report``, ``top``) never
block the writer.

A SQLite store this opens for the first time is created here, 0600, before
SQLite sees it: SQLite gives the ``-wal`` and ``-shm`` files the database
file's permissions, so none of the three is readable by other users. A
folder made for it (``create_dir``) is 0700. See ``infermeter.store.private_files``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from infermeter.errors import StoreError
from infermeter.store.private_files import create_private_file, private_dir, warn_if_public


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL, or None for another database or memory."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def redact(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def open_engine(url: str, create_dir: bool = False, warn_public: bool = False) -> Engine:
    """Connect and check the connection, or raise StoreError with one line.

    ``warn_public``: warn when an existing SQLite store is readable by others
    (the agent says it once at start; every report and query would be noise).
    """
    try:
        u = make_url(url)
    except ArgumentError:
        raise StoreError(f"database URL {url!r} is not a valid SQLAlchemy URL") from None
    path = sqlite_path(url)
    if path is not None:
        if create_dir:
            private_dir(path.parent)
        elif not path.parent.is_dir():
            raise StoreError(f"cannot open database {path}: folder {path.parent} does not exist")
        if not _sqlite_uri(u.query):
            _create_private(path, warn_public)
    kwargs: dict[str, Any] = {}
    if u.get_backend_name() == "postgresql" and u.drivername == "postgresql":
        u = u.set(drivername="postgresql+psycopg")
    if u.get_backend_name() == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": 5}
        kwargs["pool_pre_ping"] = True
    try:
        engine = create_engine(u, **kwargs)
    except (NoSuchModuleError, ModuleNotFoundError) as e:
        raise StoreError(f"database URL {redact(url)}: driver not installed ({e})") from None
    if path is not None:
        event.listen(engine, "connect", _sqlite_pragmas)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as e:
        engine.dispose()
        reason = str(e.orig).strip().splitlines()[0] if e.orig else str(e)
        raise StoreError(f"cannot connect to database {redact(url)}: {reason}") from None
    return engine


def _create_private(path: Path, warn_public: bool) -> None:
    """Create a new SQLite file 0600 (its -wal and -shm follow); maybe warn about an open one."""
    try:
        created = create_private_file(path)
    except OSError:
        return  # a folder we may not write to: SQLite's own open says why, in one line
    if warn_public and not created and path.is_file():
        warn_if_public(path)


def _sqlite_uri(query: Any) -> bool:
    """Whether the URL hands SQLite a ``file:`` URI, whose path is not ``database`` verbatim."""
    return str(query.get("uri", "")).lower() in ("1", "true", "yes", "on")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()
