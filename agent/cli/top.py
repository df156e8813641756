"""``infermeter top``: a live full-screen view of what the devices and models draw and cost.

It reads the running agent's store read-only (infermeter.report.top), once a
second, and never writes. Keys come from the terminal in cbreak mode (no
line buffering, no echo, signals still on), polled with ``select`` so the
refresh never waits on a key: ``q`` quits, and Ctrl-C (SIGINT) quits the
same clean way. The terminal's settings are restored on every way out, and
rich's alternate screen gives the shell its screen back. When stdin is not
a terminal there are no keys to read: Ctrl-C or SIGTERM ends it, and
``--once`` prints one frame without the full screen.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import termios
import time
import tty
from collections.abc import Iterator
from datetime import UTC, datetime
from types import FrameType

import click
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from infermeter.cli import App, cli, pass_app
from infermeter.cli.report import money, share
from infermeter.report.build import Amount
from infermeter.report.top import Snapshot, UseNow, open_readonly, snapshot
from infermeter.safe_text import label, printable
from infermeter.store.engine import redact


def render(snap: Snapshot, store: str, now: float) -> RenderableType:
    """One frame. Device, target and model names are stored text: each cell is a
    ``safe_text.label``, so none is read as markup or reaches the terminal raw."""
    cur = snap.currency
    store = printable(store)
    if snap.as_of is None:
        return Text(f"infermeter top: {store} holds no device windows yet (is the agent running?)")
    lag = max(0.0, now - snap.as_of)
    head = Text.assemble(
        ("infermeter top", "bold"),
        f"  {store}  as of {datetime.fromtimestamp(snap.as_of, tz=UTC):%H:%M:%S} UTC"
        f" ({_ago(lag)})   q: quit",
    )
    totals = Text(
        f"now {money(_amt(snap.cost_per_hour), cur)}/h   today {money(_amt(snap.cost_today), cur)}"
        f"   idle {snap.idle_w:.0f} W   keep-warm {snap.keepwarm_w:.0f} W"
        f"   (last {snap.recent_s:.0f} s)"
    )
    devices = Table(title="Devices", title_justify="left", box=None, pad_edge=False, expand=False)
    devices.add_column("device", overflow="fold", max_width=40)
    for name in ("power W", "util", "memory", "meter"):
        devices.add_column(name, justify="right", no_wrap=True)
    for d in snap.devices:
        memory = "-"
        if d.memory_used_bytes is not None and d.memory_total_bytes:
            memory = f"{d.memory_used_bytes / 2**30:.1f}/{d.memory_total_bytes / 2**30:.0f} GiB"
        cells = (d.label, f"{d.power_w:.1f}", share(d.utilisation), memory, d.method)
        devices.add_row(*map(label, cells))
    return Group(
        head,
        totals,
        Text(""),
        devices,
        Text(""),
        _uses("Targets (processes)", "target", snap.targets, cur),
        Text(""),
        _uses("Models", "model", snap.models, cur),
    )


def _amt(value: float | None) -> Amount:
    return Amount(value, 0.0 if value is not None else 1.0)


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def _uses(title: str, what: str, uses: tuple[UseNow, ...], cur: str | None) -> Table:
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    table.add_column(what, overflow="fold", max_width=40)
    for name in ("W now", "per hour", "today", "req/s"):
        table.add_column(name, justify="right", no_wrap=True)
    for u in uses:
        cells = (
            u.label,
            f"{u.power_w:.1f}",
            money(_amt(u.cost_per_hour), cur),
            money(_amt(u.cost_today), cur),
            f"{u.requests_per_s:.1f}" if u.requests_per_s else "-",
        )
        table.add_row(*map(label, cells))
    return table


@contextlib.contextmanager
def cbreak(fd: int) -> Iterator[None]:
    """Keys one at a time, unechoed, Ctrl-C still a signal; the settings restored after."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def wait_for_key(fd: int | None, timeout: float) -> str:
    """What was typed within ``timeout`` seconds ('' if nothing); never blocks longer."""
    if fd is None:
        time.sleep(timeout)
        return ""
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return ""
    data = os.read(fd, 64)
    return data.decode(errors="replace") if data else "q"  # EOF: the terminal went away


def _raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@cli.command()
@click.option(
    "--interval", type=float, default=1.0, show_default=True, help="Seconds between refreshes."
)
@click.option("--once", is_flag=True, help="Print one frame and exit (no full screen).")
@pass_app
def top(app: App, interval: float, once: bool) -> None:
    """Live view of the devices, processes and models: power, cost now and today, requests/s."""
    if interval <= 0:
        raise click.BadParameter("must be > 0", param_hint="--interval")
    url = app.config.store_url
    engine = open_readonly(url)
    store = redact(url)
    console = Console()
    try:
        if once or not console.is_terminal:
            console.print(render(snapshot(engine), store, time.time()))
            return
        fd = sys.stdin.fileno() if sys.stdin.isatty() else None
        signal.signal(signal.SIGTERM, _raise_interrupt)
        keys = cbreak(fd) if fd is not None else contextlib.nullcontext()
        with keys, Live(console=console, screen=True, auto_refresh=False) as live:
            while True:
                live.update(render(snapshot(engine), store, time.time()), refresh=True)
                if wait_for_key(fd, interval).lower().startswith("q"):
                    break
    except KeyboardInterrupt:
        pass  # Ctrl-C is a way to quit, not an error
    finally:
        engine.dispose()
