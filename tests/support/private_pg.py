"""A private PostgreSQL server for one test: a store that can really go away.

The shared server of ``conftest.pg_url`` must stay up for everyone, so tests
that need the database to vanish under a running agent (and come back) start
their own with ``initdb`` and ``pg_ctl`` in a temporary folder on a free
port, and stop it with ``pg_ctl stop``: what the agent then sees is exactly
a server that went away (connection refused). PostgreSQL refuses to run as
root, so under root its commands run as the ``postgres`` user.

Without PostgreSQL's server programs the tests skip, saying why, unless
``INFERMETER_REQUIRE_PG=1`` makes that a failure (as for ``pg_url``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from support.pg import require_pg


def _bindir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    dirs = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name or 0)
    )
    return Path(dirs[-1]) if dirs and Path(dirs[-1], "initdb").exists() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivatePostgres:
    """One initdb'd cluster; ``start()``/``stop()`` as often as a test needs."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="im-pg-"))  # short: it holds the Unix socket
        self.data = self.root / "data"
        self.port = _free_port()
        self.user: str | None = None
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self.user = "postgres"
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str) -> None:
        r = subprocess.run(
            [str(self.bindir / program), *args],
            user=self.user,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.root,
        )
        if r.returncode != 0:
            raise RuntimeError(f"{program} failed: {r.stderr.strip() or r.stdout.strip()}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "log"),
            "-o",
            options,
            "-w",
            "start",
        )

    def stop(self) -> None:
        """Stop at once, as a crashed or killed server does: no goodbye to the clients."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError):
                self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL server, started; removed afterwards (use it in a fixture)."""
    bindir = _bindir()
    reason = None
    if bindir is None:
        reason = "no PostgreSQL server programs (initdb, pg_ctl) on this machine"
    elif os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            reason = "running as root and there is no postgres user to run initdb as"
    if reason:
        require_pg(reason)
    assert bindir is not None
    pg = PrivatePostgres(bindir)
    try:
        pg.start()
        yield pg
    finally:
        pg.remove()
