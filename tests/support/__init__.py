"""Builders and helpers shared by the tests; fixtures live in tests/conftest.py.

Test modules import from here (``from support import FIXTURES``); pytest puts
tests/ on the path (``pythonpath`` in pyproject.toml), and the test files are
imported by path (``--import-mode=importlib``), so two packages may each have a
``test_replay.py``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
ROOT = TESTS.parent
FIXTURES = TESTS / "fixtures"

# How long one command may take before it is taken for hung: long, because
# the machine may be busy; the tests never time a command with it.
CLI_TIMEOUT_S = 300.0


def infermeter_cmd() -> list[str]:
    """The installed console script next to this interpreter."""
    script = Path(sys.executable).with_name("infermeter")
    return [str(script)] if script.exists() else [sys.executable, "-m", "infermeter"]


def run_cli(
    env: Mapping[str, str], *args: str, check: bool = False, timeout: float = CLI_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """``infermeter ARGS`` run as a user runs it, with ``env``: exit code, stdout, stderr as text.

    The caller checks the exit code (an expected failure is as much a result
    as a success), or passes ``check`` where only success will do.
    """
    return subprocess.run(
        [*infermeter_cmd(), *args],
        env=dict(env),
        capture_output=True,
        text=True,
        check=check,
        timeout=timeout,
    )
