"""Recordings replayed once per test session, copied for each test that wants a store.

Replaying ``h100-serving`` costs a subprocess and a few seconds; a dozen
tests each want a store holding it and nothing else. The first asks
replays it into a template (a SQLite file, a PostgreSQL database), every
test gets a copy: SQLite's backup API for a file, ``CREATE DATABASE ...
TEMPLATE`` on the server. A test may change its copy freely.

The templates are replayed by the CLI with only the built-in plugins and no
config file, as ``infermeter replay`` runs for a user who has set nothing.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path

from sqlalchemy.engine import make_url

from support import FIXTURES, infermeter_cmd
from support.pg import fresh_database

SERVING = FIXTURES / "h100-serving"
ENCODER = FIXTURES / "h100-resnet-encoder"


def replay_into(url: str, traces: Sequence[Path], home: Path) -> None:
    """``infermeter --db URL replay TRACE`` for each trace, with nothing of the user's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERMETER_")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / "c"), XDG_DATA_HOME=str(home / "d"))
    for trace in traces:
        done = subprocess.run(
            [*infermeter_cmd(), "--db", url, "replay", "--no-progress", str(trace)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr


class ReplayedStores:
    """Template stores by the recordings they hold, made on first use."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._sqlite: dict[tuple[str, ...], Path] = {}
        self._pg: dict[tuple[str, ...], str] = {}
        self._held = ExitStack()

    def sqlite(self, dest: Path, traces: Sequence[Path] = (SERVING,)) -> str:
        """A SQLite file at ``dest`` holding ``traces`` replayed; its URL."""
        key = tuple(t.name for t in traces)
        if key not in self._sqlite:
            home = self._folder / ("sqlite-" + "+".join(key))
            home.mkdir(parents=True)
            template = home / "template.db"
            replay_into(f"sqlite:///{template}", traces, home)
            self._sqlite[key] = template
        with sqlite3.connect(self._sqlite[key]) as src, sqlite3.connect(dest) as copy:
            src.backup(copy)
        src.close()
        copy.close()
        dest.chmod(0o600)  # as the agent makes its store; a wider file draws a warning
        return f"sqlite:///{dest}"

    def postgresql(self, traces: Sequence[Path] = (SERVING,)) -> AbstractContextManager[str]:
        """A fresh database holding ``traces`` replayed, dropped on leaving."""
        key = tuple(t.name for t in traces)
        if key not in self._pg:
            url = self._held.enter_context(fresh_database())
            home = self._folder / ("pg-" + "+".join(key))
            home.mkdir(parents=True)
            replay_into(url, traces, home)
            self._pg[key] = str(make_url(url).database)
        return fresh_database(template=self._pg[key])

    @contextmanager
    def copy(self, kind: str, folder: Path, traces: Sequence[Path] = (SERVING,)) -> Iterator[str]:
        """A store of its own on ``kind`` ("sqlite" or "postgresql") holding ``traces``."""
        if kind == "sqlite":
            yield self.sqlite(folder / "infermeter.db", traces)
            return
        with self.postgresql(traces) as url:
            yield url

    def close(self) -> None:
        self._held.close()


@contextmanager
def replayed_stores(folder: Path) -> Iterator[ReplayedStores]:
    stores = ReplayedStores(folder)
    try:
        yield stores
    finally:
        stores.close()
