"""The agent's span socket: permissions, kernel-verified pids, refusals counted."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import run_cli
from support.waiting import eventually

from infermeter.config import build_config
from infermeter.errors import InfermeterError
from infermeter.hookspecs import SpanSource
from infermeter.plugin_manager import make_plugin_manager
from infermeter.records import Span
from infermeter.spans.emitter import Emitter
from infermeter.spans.receiver import SocketReceiver, socket_group
from infermeter.spans.wire import MAX_DATAGRAM, encode_batch


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short folder: AF_UNIX paths must fit 108 bytes, pytest's tmp_path may not."""
    d = Path(tempfile.mkdtemp(prefix="im-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def receiver(sock_dir: Path) -> Iterator[SocketReceiver]:
    r = SocketReceiver(str(sock_dir / "run" / "spans.sock"))
    yield r
    r.close()


def send(path: str, data: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(data, path)


def span(model: str = "m", pid: int = 1) -> Span:
    return Span(pid=pid, model=model, t0=10.0, t1=11.0)


def test_socket_is_owner_and_group_only_in_a_private_folder(receiver: SocketReceiver) -> None:
    st = os.stat(receiver.path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert stat.S_IMODE(os.stat(Path(receiver.path).parent).st_mode) == 0o750


def test_spans_arrive_with_the_senders_pid_and_its_drop_count(receiver: SocketReceiver) -> None:
    send(receiver.path, encode_batch([span("a"), span("b")], dropped=5)[0])
    assert eventually(lambda: receiver.stats()["datagrams"] == 1)
    spans = receiver.drain()
    assert [(s.model, s.pid) for s in spans] == [("a", os.getpid()), ("b", os.getpid())]
    assert receiver.drain() == []
    assert receiver.sender_dropped() == {os.getpid(): 5}
    assert receiver.dropped() == 5
    assert isinstance(receiver, SpanSource)


def test_the_pid_comes_from_the_kernel_not_the_payload(receiver: SocketReceiver) -> None:
    claim = encode_batch([span("forged", pid=1)], dropped=3)[0]
    code = (
        "import socket, sys\n"
        "sys.stdin.readline()\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
        "s.sendto(bytes.fromhex(sys.argv[2]), sys.argv[1])\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, receiver.path, claim.hex()], stdin=subprocess.PIPE
    )
    proc.communicate(b"go\n", timeout=60)
    assert proc.returncode == 0
    assert eventually(lambda: receiver.stats()["datagrams"] == 1)
    assert [(s.model, s.pid) for s in receiver.drain()] == [("forged", proc.pid)]
    assert receiver.sender_dropped() == {proc.pid: 3}


def test_malformed_and_oversize_datagrams_are_refused_and_counted(
    receiver: SocketReceiver,
) -> None:
    send(receiver.path, b"not json")
    send(
        receiver.path,
        b'{"v":1,"d":0,"s":[[1,"m",2.0,1.0,1,null,null,null,null,{},null,null,null,null]]}',
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        s.sendto(b" " * (MAX_DATAGRAM + 100), receiver.path)
    send(receiver.path, encode_batch([span("ok")])[0])
    assert eventually(lambda: receiver.stats()["datagrams"] == 1 and receiver.dropped() == 3)
    stats = receiver.stats()
    assert (stats["malformed"], stats["oversize"]) == (2, 1)
    assert [s.model for s in receiver.drain()] == ["ok"]


def test_descriptors_passed_along_are_refused_and_not_leaked(receiver: SocketReceiver) -> None:
    fds_before = len(os.listdir("/proc/self/fd"))
    r, w = os.pipe()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(receiver.path)
            for _ in range(5):
                socket.send_fds(s, [encode_batch([span()])[0]], [r, w])
        assert eventually(lambda: receiver.dropped() == 5)
        assert receiver.stats()["ancillary"] == 5
        assert receiver.drain() == []
    finally:
        os.close(r)
        os.close(w)
    assert len(os.listdir("/proc/self/fd")) == fds_before


def test_the_queue_is_bounded_and_drops_the_oldest(sock_dir: Path) -> None:
    r = SocketReceiver(str(sock_dir / "s.sock"), max_queue=10)
    try:
        send(r.path, encode_batch([span(f"m{i}") for i in range(25)])[0])
        assert eventually(lambda: r.stats()["datagrams"] == 1)
        assert [s.model for s in r.drain()] == [f"m{i}" for i in range(15, 25)]
        assert r.stats()["queue_full"] == 15 and r.dropped() == 15
    finally:
        r.close()


def test_a_live_agent_keeps_its_path_and_a_stale_socket_is_replaced(sock_dir: Path) -> None:
    path = str(sock_dir / "s.sock")
    first = SocketReceiver(path)
    with pytest.raises(InfermeterError, match="another agent"):
        SocketReceiver(path)
    first.close()
    assert not os.path.exists(path)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens: an agent that died
    second = SocketReceiver(path)
    try:
        send(path, encode_batch([span("after")])[0])
        assert eventually(lambda: [s.model for s in second.drain()] == ["after"])
    finally:
        second.close()


def test_a_path_that_is_not_a_socket_is_an_error(sock_dir: Path) -> None:
    (sock_dir / "s.sock").write_text("mine")
    with pytest.raises(InfermeterError, match="not a socket"):
        SocketReceiver(str(sock_dir / "s.sock"))
    assert (sock_dir / "s.sock").read_text() == "mine"


def test_close_leaves_a_newer_agents_socket_alone(sock_dir: Path) -> None:
    path = str(sock_dir / "s.sock")
    old = SocketReceiver(path, start=False)
    os.unlink(path)
    new = SocketReceiver(path)
    try:
        old.close()
        assert os.path.exists(path)
        send(path, encode_batch([span("new")])[0])
        assert eventually(lambda: [s.model for s in new.drain()] == ["new"])
    finally:
        new.close()


def test_the_plugin_offers_the_receiver_at_the_configured_path(sock_dir: Path) -> None:
    pm = make_plugin_manager()
    assert pm.get_plugin("core.span_socket") is not None
    path = str(sock_dir / "cfg.sock")
    config = build_config(
        pm.config_options(), {"spans": {"socket": path, "max_queue": 7}}, environ={}
    )
    sources = pm.collect("infermeter_span_sources", config=config)
    try:
        (source,) = [s for s in sources if isinstance(s, SocketReceiver)]
        assert source.path == path and source.max_queue == 7
        send(path, encode_batch([span("via-plugin")])[0])
        assert eventually(lambda: [s.model for s in source.drain()] == ["via-plugin"])
        # A second agent on the same socket gets no source, and no exception.
        assert [
            s
            for s in pm.collect("infermeter_span_sources", config=config)
            if isinstance(s, SocketReceiver)
        ] == []
    finally:
        for s in sources:
            s.close()


# ----- the path vanishes -----------------------------------------------------------


def test_a_deleted_socket_directory_is_made_again_and_senders_carry_on(
    sock_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The directory goes (rm -rf, a tmp cleaner): the receiver binds again, once, and says so.

    An emitter connected to the old socket finds the new one on its next
    datagram: both spans arrive and it counts no drop.
    """
    caplog.set_level("WARNING", logger="infermeter.spans.receiver")
    run = sock_dir / "run"
    r = SocketReceiver(str(run / "spans.sock"))
    emitter = Emitter(r.path, interval_s=0.02)
    try:
        emitter.emit(span("before"))
        assert eventually(lambda: [s.model for s in r.drain()] == ["before"])
        shutil.rmtree(run)
        assert eventually(lambda: r.rebinds == 1 and os.path.exists(r.path))
        assert stat.S_IMODE(os.stat(run).st_mode) == 0o750
        assert stat.S_IMODE(os.stat(r.path).st_mode) == 0o660
        emitter.emit(span("after"))
        assert eventually(lambda: [s.model for s in r.drain()] == ["after"])
        assert emitter.stats().dropped == 0
        assert [r.check_path() for _ in range(3)] == [False] * 3  # it is ours again
        vanished = [m for m in caplog.messages if "vanished" in m]
        assert vanished == [
            f"span socket {r.path} vanished (its directory deleted?): bound it again"
        ]
        assert r.rebinds == 1
    finally:
        emitter.close()
        r.close()
    assert not os.path.exists(r.path)  # the new socket is ours to remove


def test_a_path_another_agent_took_is_left_to_it(
    sock_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = str(sock_dir / "s.sock")
    old = SocketReceiver(path, start=False)
    os.unlink(path)
    new = SocketReceiver(path)
    try:
        assert old.check_path() is False and old.check_path() is False
        taken = [m for m in caplog.messages if "taken by another agent" in m]
        assert len(taken) == 1  # logged once, not at every check
        send(path, encode_batch([span("new")])[0])
        assert eventually(lambda: [s.model for s in new.drain()] == ["new"])
        assert old.rebinds == 0
    finally:
        old.close()
        new.close()


def test_a_file_put_where_the_socket_was_is_not_touched(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    r = SocketReceiver(str(path), start=False)
    try:
        path.unlink()
        path.write_text("someone's file")
        assert r.check_path() is False
        assert path.read_text() == "someone's file"
    finally:
        r.close()
    assert path.read_text() == "someone's file"


# ----- the socket group ----------------------------------------------------------------


def other_group() -> grp.struct_group:
    """A group this test may give files to that is not the process's own group.

    Root may use any: the system's ``daemon`` group. Anyone else: one of
    their supplementary groups, else their own (then only the mode is shown).
    """
    if os.geteuid() == 0:
        return grp.getgrnam("daemon")
    others = [g for g in os.getgroups() if g != os.getegid()]
    return grp.getgrgid(others[0] if others else os.getegid())


def send_as(uid: int, gid: int, groups: list[int], path: str, data: bytes) -> int:
    """Send ``data`` from a forked process that became ``uid``: 0 sent, 13 refused."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.sendto(data, path)
            code = 0
        except PermissionError:
            code = 13
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_the_socket_and_its_folder_are_given_to_the_configured_group(sock_dir: Path) -> None:
    """Mode and group as configured; under root, also what they mean for another user.

    A second user is needed to show the effect, so that part runs when the
    test runs as root: the sender is ``nobody``, once with the socket's
    group and once without it, and only the first gets through.
    """
    group = other_group()
    os.chmod(sock_dir, 0o755)  # mkdtemp's 0700 would stop nobody before our folder does
    r = SocketReceiver(str(sock_dir / "run" / "spans.sock"), group=group.gr_name)
    try:
        sock_st, dir_st = os.stat(r.path), os.stat(sock_dir / "run")
        assert (sock_st.st_gid, stat.S_IMODE(sock_st.st_mode)) == (group.gr_gid, 0o660)
        assert (dir_st.st_gid, stat.S_IMODE(dir_st.st_mode)) == (group.gr_gid, 0o750)
        assert socket_group(str(group.gr_gid)) == group.gr_gid  # a gid works as well
        if os.geteuid() != 0:
            return
        data = encode_batch([span("from-nobody")])[0]
        nobody = pwd.getpwnam("nobody")
        codes = [
            send_as(nobody.pw_uid, nobody.pw_gid, extra, r.path, data)
            for extra in (
                [group.gr_gid],
                [],
            )
        ]
        assert codes == [0, 13]
        assert eventually(lambda: r.stats()["datagrams"] == 1)
        assert [s.model for s in r.drain()] == ["from-nobody"]
    finally:
        r.close()


def test_the_default_group_is_used_only_when_it_exists_and_may_be_used() -> None:
    assert socket_group("", default="no-such-group-here") is None
    if os.geteuid() == 0:
        assert socket_group("", default="daemon") == grp.getgrnam("daemon").gr_gid
    with pytest.raises(InfermeterError, match="no group 'no-such-group-here' on this host"):
        socket_group("no-such-group-here")


def test_an_unknown_group_in_the_config_is_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[spans]\ngroup = "no-such-group-here"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERMETER_")}
    r = run_cli(env, "--config", str(config), "config", "show")
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert "spans.group" in line and "no group 'no-such-group-here' on this host" in line


def test_an_existing_folder_closed_to_the_group_is_left_as_is_and_said(
    sock_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    group = other_group()
    os.chmod(sock_dir, 0o700)  # as mkdtemp made it: the group cannot get in
    r = SocketReceiver(str(sock_dir / "spans.sock"), group=group.gr_name, start=False)
    try:
        assert stat.S_IMODE(os.stat(sock_dir).st_mode) == 0o700
        assert os.stat(r.path).st_gid == group.gr_gid
        (line,) = [m for m in caplog.messages if "closed to the socket group" in m]
        assert line.startswith(f"span socket directory {sock_dir} (mode 700, group ")
    finally:
        r.close()


def test_a_dead_socket_put_in_place_of_ours_is_replaced(sock_dir: Path) -> None:
    path = str(sock_dir / "s.sock")
    r = SocketReceiver(path, start=False)
    try:
        os.unlink(path)
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        stale.bind(path)
        stale.close()  # a socket file nobody listens on
        assert r.check_path() is True and r.rebinds == 1
        send(path, encode_batch([span("again")])[0])
        r.receive_one()
        assert [s.model for s in r.drain()] == ["again"]
    finally:
        r.close()


def test_the_senders_remembered_are_bounded_and_their_drops_still_counted(
    sock_dir: Path,
) -> None:
    """Issue 10, case 3: every in-memory structure is bounded, this per-pid map too.

    Each datagram here says its sender dropped 3 spans; after the first
    _MAX_PIDS senders, the others are folded into pid 0, so no count is lost.
    """
    from infermeter.spans import receiver as receiver_module

    r = SocketReceiver(str(sock_dir / "s.sock"), start=False)
    try:
        limit = receiver_module._MAX_PIDS
        (data,) = encode_batch([], dropped=3)
        for pid in range(1, limit + 101):  # 100 senders more than it remembers
            assert r.handle(data, pid)
        by_pid = r.sender_dropped()
        assert len(by_pid) == limit + 1  # the first senders, and pid 0 for the rest
        assert by_pid[0] == 3 * 100
        assert sum(by_pid.values()) == 3 * (limit + 100) == r.dropped()
    finally:
        r.close()
