"""The source folders must never be importable under their own names: `agent`
and `plugins` would collide with modules of the applications we instrument."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import infermeter
import infermeter.plugins


def test_source_folder_names_are_not_importable(tmp_path: Path) -> None:
    for name in ("agent", "plugins", "migrations"):
        r = subprocess.run(
            [sys.executable, "-c", f"import {name}"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, name


def test_one_copy_of_the_hookspecs() -> None:
    assert "agent" not in sys.modules and "agent.hookspecs" not in sys.modules
    assert infermeter.hookimpl is infermeter.hookspecs.hookimpl
    assert Path(infermeter.plugins.__file__).parent.name in ("plugins",)
