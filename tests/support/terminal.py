"""A real terminal for the tests: a program run on a pty, as a user's shell runs it."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import shlex
import signal
import struct
import termios
import time
from pathlib import Path

from support import infermeter_cmd

# What a screen holds once the escape sequences are taken out.
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]")


class Screen:
    """``infermeter top`` on a pty (160x40 unless told), everything it wrote kept."""

    def __init__(self, url: str, home: Path, rows: int = 40, columns: int = 160) -> None:
        command = " ".join(shlex.quote(a) for a in [*infermeter_cmd(), "--db", url, "top"])
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: a shell on the terminal, as a user has
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
            env = {k: v for k, v in os.environ.items() if not k.startswith("INFERMETER_")}
            env.update(TERM="xterm-256color", HOME=str(home), XDG_CONFIG_HOME=str(home / "c"))
            # rich reads the size from LINES and COLUMNS first: say it, whatever
            # the environment the tests run in exported.
            env.update(LINES=str(rows), COLUMNS=str(columns))
            # The shell traps SIGINT (a handler, so top gets the default one) to live
            # past a Ctrl-C and report top's exit code and the terminal's settings.
            script = f"trap : INT; {command}; echo EXIT=$?; stty -a"
            os.execvpe("sh", ["sh", "-c", script], env)
        self.raw = b""

    def read_until(self, predicate: object, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text
            if predicate(text):  # type: ignore[operator]
                return text
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                self.raw += chunk
        return self.text

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw.decode(errors="replace"))

    def send(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def wait(self, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            self.read_until(lambda _t: False, 0.2)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError(f"top did not exit: {self.text[-2000:]}")
