"""The agent's end of the span pipe: a Unix datagram socket, validated and bounded.

``SocketReceiver`` is a SpanSource. A daemon thread receives: a Unix
datagram socket queues at most ``net.unix.max_dgram_qlen`` datagrams (10 by
default), so waiting for the agent's one-second tick would make every
sender see "socket full". The thread decodes each datagram (``wire``) into a
bounded deque; ``drain()`` hands the deque over without blocking.

Trust: the socket is ``0o660`` in a ``0o750`` directory, both owned by the
socket group (``[spans] group``; by default the group ``infermeter`` when it
exists and the agent may use it, else the agent's own), so only the agent's
user and that group can send: put the inference users in it. A directory
that already exists (systemd's ``RuntimeDirectory=``) keeps its mode and
group; the socket gets them all the same.
``SO_PASSCRED`` makes the kernel attach the sender's pid to every datagram
(``SCM_CREDENTIALS``); that pid replaces whatever the payload says, so one
process cannot charge its spans to another. A pid of 0 (a sender in a pid
namespace the agent cannot see) is treated as no credentials.

Everything not accepted is counted by reason: over size, malformed (the
reason is logged at debug), no credentials, unexpected ancillary data, a
span refused within a datagram that holds others (out of range: the
others are kept), and queue overflow (the oldest spans go). Senders' own
drops (the ``d`` field) are kept per pid; ``dropped()`` is the sum of all
of them. Strings the decoder replaced or cut to fit the store are counted
too (``stats()["strings_changed"]``); both are logged, at most once a minute.

The path is checked every ``PATH_CHECK_S``: when it vanished (someone
deleted the directory, a tmp cleaner) the receiver makes the directory again
and binds a new socket there, logging it once; the senders find it on their
next datagram. A path another live agent has taken since is left to it.
"""

from __future__ import annotations

import array
import contextlib
import grp
import logging
import os
import socket
import stat
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from pathlib import Path

from infermeter.errors import InfermeterError
from infermeter.records import Span
from infermeter.spans.wire import MAX_DATAGRAM, decode, default_socket_path

log = logging.getLogger(__name__)

SOCKET_MODE = 0o660
DIR_MODE = 0o750
DEFAULT_GROUP = "infermeter"
PATH_CHECK_S = 1.0  # how often the receiving thread checks that its path is still its own
_UCRED = struct.Struct("3i")  # pid, uid, gid
_ANC_SIZE = socket.CMSG_SPACE(_UCRED.size)
_MAX_PIDS = 65536  # senders remembered in sender_dropped(); beyond, folded into pid 0

# Drop reasons, as stats() names them.
OVERSIZE = "oversize"
MALFORMED = "malformed"
NO_CREDENTIALS = "no_credentials"
ANCILLARY = "ancillary"
QUEUE_FULL = "queue_full"
INVALID_SPAN = "invalid_span"
NOTICE_EVERY_S = 60.0  # a warning of each kind at most this often


class SocketReceiver:
    """SpanSource bound at ``path``; see the module docstring."""

    name = "socket"

    def __init__(
        self,
        path: str | None = None,
        *,
        max_queue: int = 100_000,
        start: bool = True,
        group: str | None = None,
    ) -> None:
        self.path = path or default_socket_path()
        self.max_queue = max_queue
        self.gid = socket_group(group)  # None: the agent's own group
        self._lock = threading.Lock()
        self._queue: deque[Span] = deque()
        self._counts: Counter[str] = Counter()
        self._sender_dropped: dict[int, int] = {}
        self.datagrams = 0
        self.strings_changed = 0
        self._noticed: dict[str, float] = {}
        self._stop = threading.Event()
        self._sock, self._ino = _bind(self.path, self.gid)
        self._next_check = time.monotonic() + PATH_CHECK_S
        self._path_trouble: str | None = None  # what was last logged about the path
        self.rebinds = 0
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._run, name="infermeter-spans", daemon=True)
            self._thread.start()

    # ----- SpanSource ----------------------------------------------------------

    def drain(self) -> Sequence[Span]:
        with self._lock:
            spans, self._queue = self._queue, deque()
        return list(spans)

    def dropped(self) -> int:
        with self._lock:
            return sum(self._counts.values()) + sum(self._sender_dropped.values())

    def sender_dropped(self) -> dict[int, int]:
        """Spans each sender (by kernel-verified pid) says it dropped, accumulated."""
        with self._lock:
            return dict(self._sender_dropped)

    def stats(self) -> dict[str, int]:
        """What this receiver refused, by reason, and what it accepted."""
        with self._lock:
            out = dict(self._counts)
            out["datagrams"] = self.datagrams
            out["strings_changed"] = self.strings_changed
            out["sender_dropped"] = sum(self._sender_dropped.values())
            out["queued"] = len(self._queue)
        return out

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)
        self._sock.close()
        # Unlink only our own socket: a newer agent may have bound the path since.
        with contextlib.suppress(OSError):
            if os.lstat(self.path).st_ino == self._ino:
                os.unlink(self.path)

    # ----- receiving -------------------------------------------------------------

    def _run(self) -> None:
        self._sock.settimeout(0.2)  # how soon close() is noticed
        while not self._stop.is_set():
            if time.monotonic() >= self._next_check:
                self._next_check = time.monotonic() + PATH_CHECK_S
                try:
                    self.check_path()
                except Exception:
                    log.exception("span socket %s: checking the path failed", self.path)
            try:
                self.receive_one()
            except TimeoutError:
                continue
            except OSError as e:
                if self._stop.is_set():
                    return
                log.warning("span socket %s: %s", self.path, e)
                self._stop.wait(0.1)
            except Exception:
                log.exception("span socket %s: receiving failed", self.path)

    def receive_one(self) -> None:
        """Receive and handle one datagram (blocking per the socket's timeout)."""
        data, anc, flags, _addr = self._sock.recvmsg(MAX_DATAGRAM + 1, _ANC_SIZE)
        pid = 0
        for level, kind, cdata in anc:
            if level != socket.SOL_SOCKET:
                continue
            if kind == socket.SCM_CREDENTIALS and len(cdata) >= _UCRED.size:
                pid = _UCRED.unpack_from(cdata)[0]
            elif kind == socket.SCM_RIGHTS:
                _close_fds(cdata)  # nobody sends us descriptors: do not leak them
        self.handle(data, pid, flags)

    def handle(self, data: bytes, pid: int, flags: int = 0) -> bool:
        """Validate one datagram from ``pid`` and queue its spans; False if refused."""
        if flags & socket.MSG_TRUNC or len(data) > MAX_DATAGRAM:
            return self._refuse(OVERSIZE)
        if flags & socket.MSG_CTRUNC:
            return self._refuse(ANCILLARY)
        if pid <= 0:
            return self._refuse(NO_CREDENTIALS)
        try:
            decoded = decode(data, pid=pid)
        except ValueError as e:
            log.debug("span datagram from pid %d refused: %s", pid, e)
            return self._refuse(MALFORMED)
        if decoded.refused and not decoded.spans:  # nothing in it is a span
            log.debug("span datagram from pid %d refused: %s", pid, decoded.refused[0])
            return self._refuse(MALFORMED)
        spans, sender_dropped = decoded.spans, decoded.dropped
        with self._lock:
            self.datagrams += 1
            self.strings_changed += decoded.changed
            changed_in_all = self.strings_changed
            if decoded.refused:
                self._counts[INVALID_SPAN] += len(decoded.refused)
            refused_in_all = self._counts[INVALID_SPAN]
            if sender_dropped:
                if pid not in self._sender_dropped and len(self._sender_dropped) >= _MAX_PIDS:
                    pid = 0
                self._sender_dropped[pid] = self._sender_dropped.get(pid, 0) + sender_dropped
            self._queue.extend(spans)
            over = len(self._queue) - self.max_queue
            if over > 0:
                for _ in range(over):
                    self._queue.popleft()
                self._counts[QUEUE_FULL] += over
        if decoded.refused:
            self._notice(
                INVALID_SPAN,
                "%d spans from pid %d refused (%d in all), the rest of the datagram kept: %s",
                len(decoded.refused),
                pid,
                refused_in_all,
                decoded.refused[0],
            )
        if decoded.changed:
            self._notice(
                "strings_changed",
                "%d span strings from pid %d replaced or cut to fit the store (%d in all)",
                decoded.changed,
                pid,
                changed_in_all,
            )
        return True

    def check_path(self) -> bool:
        """Bind again if the socket's path vanished; True if it did so now.

        A cheap ``lstat``. The path is ours while it is the inode we bound.
        Gone (its directory deleted), or a dead socket in its place: bind
        again, as at start. Another live socket there: a newer agent's, left
        alone. Anything else (a file): left as it is. Each logged once.
        """
        try:
            st: os.stat_result | None = os.lstat(self.path)
        except FileNotFoundError:
            st = None
        except OSError as e:
            self._trouble(f"cannot check the span socket {self.path}: {e.strerror or e}")
            return False
        if st is not None and st.st_ino == self._ino and stat.S_ISSOCK(st.st_mode):
            self._path_trouble = None
            return False
        if st is not None and not stat.S_ISSOCK(st.st_mode):
            self._trouble(f"span socket {self.path} was replaced by something else: left as is")
            return False
        if st is not None and _is_live(self.path):
            self._trouble(f"span socket {self.path} was taken by another agent: not receiving")
            return False
        try:
            sock, ino = _bind(self.path, self.gid)
        except InfermeterError as e:
            self._trouble(f"span socket {self.path} vanished and cannot be bound again: {e}")
            return False
        sock.settimeout(0.2)
        old, self._sock, self._ino = self._sock, sock, ino
        old.close()
        self.rebinds += 1
        self._path_trouble = None
        log.warning(
            "span socket %s %s: bound it again",
            self.path,
            "vanished (its directory deleted?)" if st is None else "was left by a dead socket",
        )
        return True

    def _trouble(self, message: str) -> None:
        """Log a problem with the path once, not every check."""
        if message != self._path_trouble:
            self._path_trouble = message
            log.warning("%s", message)

    def _notice(self, kind: str, message: str, *args: object) -> None:
        """Warn, unless a warning of this kind went out less than a minute ago."""
        now = time.monotonic()
        if now - self._noticed.get(kind, -NOTICE_EVERY_S) >= NOTICE_EVERY_S:
            self._noticed[kind] = now
            log.warning(message, *args)

    def _refuse(self, reason: str) -> bool:
        with self._lock:
            self._counts[reason] += 1
        return False


def _close_fds(cdata: bytes) -> None:
    fds = array.array("i")
    fds.frombytes(cdata[: len(cdata) - len(cdata) % fds.itemsize])
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def socket_group(name: str | None, default: str = DEFAULT_GROUP) -> int | None:
    """The gid the socket and its directory are given; None: the agent's own group.

    ``name`` (a group name or number) must exist, else InfermeterError. With
    no name: ``default`` if that group exists and this agent may give files
    to it (root, or a member), else the agent's own group.
    """
    if name:
        return _gid_of(name)
    try:
        gid = grp.getgrnam(default).gr_gid
    except KeyError:
        return None
    if os.geteuid() == 0 or gid == os.getegid() or gid in os.getgroups():
        return gid
    return None


def group_problem(name: str) -> str | None:
    """What is wrong with a configured group name (config check), or None."""
    if not name:
        return None
    try:
        _gid_of(name)
    except InfermeterError as e:
        return str(e)
    return None


def _gid_of(name: str) -> int:
    try:
        return grp.getgrgid(int(name)).gr_gid if name.isdigit() else grp.getgrnam(name).gr_gid
    except (KeyError, OverflowError):
        raise InfermeterError(f"no group {name!r} on this host") from None


def _give_to_group(path: str | Path, gid: int | None) -> None:
    if gid is None:
        return
    try:
        os.chown(path, -1, gid)
    except OSError as e:
        raise InfermeterError(
            f"cannot give {path} to group {gid}: {e.strerror or e} "
            "(the agent must be root or a member of [spans] group)"
        ) from e


def _warn_if_closed_to(parent: Path, st: os.stat_result, gid: int) -> None:
    """Say so when an existing directory keeps the socket group out (it is left as it is)."""
    if st.st_mode & stat.S_IXOTH or (st.st_gid == gid and st.st_mode & stat.S_IXGRP):
        return
    log.warning(
        "span socket directory %s (mode %o, group %d) is closed to the socket group %d: "
        "its members cannot reach the socket (systemd: Group=; or chgrp/chmod g+x it)",
        parent,
        stat.S_IMODE(st.st_mode),
        st.st_gid,
        gid,
    )


def _bind(path: str, gid: int | None = None) -> tuple[socket.socket, int]:
    """Bind the socket, owner+group only; refuse a path another live agent holds."""
    p = Path(path)
    parent = p.parent
    made = not parent.exists()
    if made:
        parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.chmod(parent, DIR_MODE)  # mkdir's mode is cut by the umask
        _give_to_group(parent, gid)
    st = os.stat(parent)
    if not made and gid is not None:
        _warn_if_closed_to(parent, st, gid)
    if st.st_uid not in (os.geteuid(), 0):
        raise InfermeterError(
            f"span socket directory {parent} belongs to uid {st.st_uid}, not to this agent: "
            "remove it or set [spans] socket"
        )
    if os.path.lexists(p):
        if not stat.S_ISSOCK(os.lstat(p).st_mode):
            raise InfermeterError(f"span socket path {p} exists and is not a socket")
        if _is_live(path):
            raise InfermeterError(f"another agent receives spans at {p}")
        os.unlink(p)  # left by an agent that died
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        with contextlib.suppress(OSError):  # more room for bursts, up to rmem_max
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind(path)
        # Between bind and chmod the socket has the umask's mode; the 0o750
        # directory keeps others out meanwhile.
        os.chmod(path, SOCKET_MODE)
        _give_to_group(path, gid)
        ino = os.lstat(path).st_ino
    except InfermeterError:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    except OSError as e:
        sock.close()
        raise InfermeterError(f"cannot bind the span socket {p}: {e.strerror or e}") from e
    return sock, ino


def _is_live(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True
