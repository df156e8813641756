"""The tests see the installed package, not the tree: an edit is invisible until reinstalled.

``make test`` installs a wheel (the way a user gets it), so a test run after
an edit of agent/ without ``make setup-test`` would test the old code and
pass or fail for the wrong reason. This test compares every Python file the
installed ``infermeter`` holds with the tree's, in both directions (a module
moved or deleted in the tree but still installed is stale too).
"""

from __future__ import annotations

from pathlib import Path

from support import ROOT

import infermeter

# Where each part of the tree is installed, inside the infermeter package.
SOURCES = {"agent": "", "plugins": "plugins", "migrations": "migrations"}


def python_files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in folder.rglob("*.py")
        if "__pycache__" not in p.parts
    }


def tree_files() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for source, target in SOURCES.items():
        for rel, data in python_files(ROOT / source).items():
            if source == "agent" and rel.split("/")[0] in ("plugins", "migrations"):
                continue
            out[str(Path(target) / rel)] = data
    return out


def test_the_installed_package_is_the_tree() -> None:
    installed_root = Path(infermeter.__file__).resolve().parent
    if installed_root == ROOT / "agent":
        return  # an editable install (make dev): the tree itself is what runs
    installed = python_files(installed_root)
    tree = tree_files()
    changed = sorted(k for k in tree if k in installed and installed[k] != tree[k])
    missing = sorted(k for k in tree if k not in installed)
    stale = sorted(k for k in installed if k not in tree)
    assert not (changed or missing or stale), (
        "stale install: run make setup-test (or make dev for an editable install); "
        f"changed {changed[:5]}, not installed {missing[:5]}, installed but gone {stale[:5]}"
    )
