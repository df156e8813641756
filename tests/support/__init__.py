"""Builders and helpers shared by the tests; fixtures live in tests/conftest.py.

Test modules import from here (``from support import FIXTURES``); pytest puts
tests/ on the path (``pythonpath`` in pyproject.toml), and the test files are
imported by path (``--import-mode=importlib``), so two packages may each have a
``test_replay.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
ROOT = TESTS.parent
FIXTURES = TESTS / "fixtures"


def infermeter_cmd() -> list[str]:
    """The installed console script next to this interpreter."""
    script = Path(sys.executable).with_name("infermeter")
    return [str(script)] if script.exists() else [sys.executable, "-m", "infermeter"]
