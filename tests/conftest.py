"""Shared fixtures: real SQLite files, a fresh database on the real PostgreSQL
server, and the third-party test plugin installed with pip.

PostgreSQL tests skip, saying why, when no server answers; CI sets
INFERMETER_REQUIRE_PG=1 so that an absent server fails the run instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
PG_ADMIN_URL = os.environ.get(
    "INFERMETER_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _pg_unavailable() -> str | None:
    try:
        engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as e:  # any failure to reach it is a reason to skip
        return f"PostgreSQL not reachable at {PG_ADMIN_URL}: {str(e).splitlines()[0]}"
    return None


_PG_REASON = _pg_unavailable()


def require_pg(reason: str | None = None) -> None:
    """Skip, saying why, when PostgreSQL is not to be had; fail instead in CI.

    ``reason`` defaults to why the shared server does not answer (None: it does).
    CI sets INFERMETER_REQUIRE_PG=1, so a missing server fails the run.
    """
    reason = _PG_REASON if reason is None else reason
    if reason:
        if os.environ.get("INFERMETER_REQUIRE_PG") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    require_pg()
    name = f"infermeter_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'infermeter.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store test runs on a real SQLite file and on the real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'infermeter.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(scope="session")
def synthetic_plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/plugin_pkg installed by pip into a folder, as a user's plugin would be."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT / "tests" / "plugin_pkg"),
        ],
        check=True,
        capture_output=True,
    )
    return target


@pytest.fixture
def cli_env(tmp_path: Path, synthetic_plugin_path: Path) -> dict[str, str]:
    """Environment for running `infermeter` as a subprocess, isolated from the user's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERMETER_")}
    env["PYTHONPATH"] = str(synthetic_plugin_path)
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg-config")
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg-data")
    env["HOME"] = str(tmp_path / "home")
    return env


def infermeter_cmd() -> list[str]:
    """The installed console script next to this interpreter."""
    script = Path(sys.executable).with_name("infermeter")
    return [str(script)] if script.exists() else [sys.executable, "-m", "infermeter"]
