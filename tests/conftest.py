"""Shared fixtures: real SQLite files, a fresh database on the real PostgreSQL
server, and the third-party test plugin installed with pip.

Builders and helpers that are not fixtures live in tests/support/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import TESTS
from support.pg import fresh_database
from support.replayed import ENCODER, SERVING, ReplayedStores, replayed_stores


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    with fresh_database() as url:
        yield url


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
def template_stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplayedStores]:
    """The recordings replayed once per session; each test takes a copy."""
    with replayed_stores(tmp_path_factory.mktemp("replayed")) as stores:
        yield stores


@pytest.fixture(params=["sqlite", "postgresql"])
def serving_db_url(
    request: pytest.FixtureRequest, template_stores: ReplayedStores, tmp_path: Path
) -> Iterator[str]:
    """A store of its own holding h100-serving replayed, on SQLite and on PostgreSQL."""
    with template_stores.copy(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def serving_sqlite_url(template_stores: ReplayedStores, tmp_path: Path) -> str:
    return template_stores.sqlite(tmp_path / "infermeter.db")


@pytest.fixture
def serving_pg_url(template_stores: ReplayedStores) -> Iterator[str]:
    with template_stores.postgresql() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def recordings_db_url(
    request: pytest.FixtureRequest, template_stores: ReplayedStores, tmp_path: Path
) -> Iterator[str]:
    """A store of its own holding both H100 recordings replayed."""
    with template_stores.copy(request.param, tmp_path, (SERVING, ENCODER)) as url:
        yield url


@pytest.fixture(scope="session")
def synthetic_plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/support/plugin_pkg installed by pip into a folder, as a user's plugin would be."""
    target = tmp_path_factory.mktemp("site")
    # Built from a copy: pip writes build/ beside the sources, and two test
    # processes (pytest -n) building in one folder would trip over each other.
    source = tmp_path_factory.mktemp("plugin-src") / "plugin_pkg"
    shutil.copytree(
        TESTS / "support" / "plugin_pkg",
        source,
        ignore=shutil.ignore_patterns("build", "*.egg-info"),
    )
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
            str(source),
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
