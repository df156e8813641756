"""Files only the agent's user may read: the store, its folder, traces.

The store and the traces hold command lines (redacted, see
``infermeter.discover.redact``, but still the shape of every served process), labels
and tenants: nothing another local user should read. What the agent creates
is therefore owner-only whatever the umask: folders 0700, files 0600.
SQLite creates a database's ``-wal``, ``-shm`` and ``-journal`` with the
database file's own permissions, so creating that file 0600 before SQLite
first opens it is what keeps all of them private.

What the agent finds already there is the operator's: a folder they chose
(``--out``, ``$INFERMETER_DATA_DIR``) keeps its mode, and a store file
others can read is left as it is (a reporting group may be meant to read
it) with a warning naming the fix when anyone at all can read it.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")

_warned: set[Path] = set()


def private_dir(path: Path) -> bool:
    """Create ``path`` (and missing parents) with the leaf 0700; True if it was created.

    Missing parents get the default mode, as ``mkdir -p`` gives them; an
    existing ``path`` is left as it is.
    """
    if path.is_dir():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=DIR_MODE)
    except FileExistsError:
        return False  # made meanwhile by another process: theirs
    os.chmod(path, DIR_MODE)  # mkdir's mode is cut by the umask, which may cut the owner too
    return True


def create_private_file(path: Path) -> bool:
    """Create ``path`` empty and 0600 if it does not exist; True if it was created."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return True


def open_private(path: Path) -> IO[str]:
    """``path`` opened for writing text, created 0600 (an existing file is truncated)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except OSError:
        os.close(fd)
        raise
    return os.fdopen(fd, "w", encoding="utf-8")


def readable_by_others(path: Path) -> list[tuple[Path, int]]:
    """The database file and side files of ``path`` any user may read or write, with modes."""
    out = []
    for p in (path, *(path.with_name(path.name + s) for s in SQLITE_SIDE_FILES)):
        try:
            mode = stat.S_IMODE(os.stat(p).st_mode)
        except OSError:
            continue
        if mode & (stat.S_IROTH | stat.S_IWOTH):
            out.append((p, mode))
    return out


def warn_if_public(path: Path) -> None:
    """Warn once per process when others may read a store file that already existed."""
    exposed = readable_by_others(path)
    if not exposed or path in _warned:
        return
    _warned.add(path)
    first, mode = exposed[0]
    log.warning(
        "store file %s is open to every local user (mode %04o) and holds command lines "
        "and labels: chmod 600 %s",
        first,
        mode,
        " ".join(str(p) for p, _ in exposed),
    )
