"""One agent per SQLite file: an exclusive lock held for the agent's life.

SQLite would let two agents interleave their writes and double-count every
interval; the second agent must refuse instead. The lock is an ``flock`` on a
file beside the database, so it goes away with the process, even on SIGKILL.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from infermeter.errors import StoreLockedError


class StoreLock:
    def __init__(self, db_path: Path) -> None:
        self.path = db_path.with_name(db_path.name + ".lock")
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        f = self.path.open("a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise StoreLockedError(
                f"another infermeter agent (pid {holder}) is already writing to "
                f"{self.path.with_suffix('')}; stop it or use another --db"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None
