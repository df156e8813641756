"""``infermeter status``: is each host's agent writing, are its rollups moving, what was set aside.

Read from the store only (the agent keeps these facts there), so it works
against a running agent, a stopped one, or a store copied elsewhere:

- the last flush: ``hosts.last_seen``, which every flush moves;
- the rollups' completion point and the hours whose rollup failed
  (infermeter.store.request_rollup: their raw rows are kept until a later
  rollup of them succeeds);
- the span sources' counters as of the agent's last rollup: spans dropped
  by reason, strings the wire replaced or cut to fit the store;
- the ``quarantine`` table: what the store or the rollups refused, counted
  by source, with the latest reasons.

Stored text (host names, reasons) is printed through infermeter.safe_text,
so a hostile label cannot drive the terminal; ``--json`` keeps it verbatim.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import click
from sqlalchemy import Connection, func, select

from infermeter.cli import App, cli, pass_app
from infermeter.safe_text import printable
from infermeter.sidecar.agent import SPAN_SOURCES_KEY
from infermeter.store import schema
from infermeter.store.request_rollup import COMPLETE_KEY, FAILED_KEY


@dataclass(frozen=True, slots=True)
class Reason:
    at: float
    reason: str


@dataclass(frozen=True, slots=True)
class QuarantineSummary:
    source: str
    count: int
    latest: tuple[Reason, ...]  # newest first


@dataclass(frozen=True, slots=True)
class HostStatus:
    host: str | None  # None: quarantined before the host row could be written
    last_flush: float | None
    rollups_complete_until: float | None
    rollup_failed_hours: tuple[float, ...]
    span_sources: Mapping[str, Mapping[str, int]]
    quarantine: tuple[QuarantineSummary, ...]


def read_status(conn: Connection, latest: int = 3) -> list[HostStatus]:
    """Every host's status, and one for quarantine rows of no host if there are any."""
    h = schema.hosts.c
    hosts: list[tuple[int | None, str | None, float | None]] = [
        (row.id, row.name, row.last_seen)
        for row in conn.execute(select(h.id, h.name, h.last_seen).order_by(h.name))
    ]
    q = schema.quarantine.c
    if conn.execute(select(q.id).where(q.host_id.is_(None)).limit(1)).first() is not None:
        hosts.append((None, None, None))
    return [_host_status(conn, host_id, name, last, latest) for host_id, name, last in hosts]


def _host_status(
    conn: Connection, host_id: int | None, name: str | None, last: float | None, latest: int
) -> HostStatus:
    state: dict[str, Any] = {}
    if host_id is not None:
        s = schema.agent_state.c
        for key, value in conn.execute(
            select(s.key, s.value).where(
                s.host_id == host_id, s.key.in_([COMPLETE_KEY, FAILED_KEY, SPAN_SOURCES_KEY])
            )
        ):
            try:
                state[key] = json.loads(value)
            except ValueError:
                continue
    q = schema.quarantine.c
    mine = q.host_id.is_(None) if host_id is None else q.host_id == host_id
    summaries = []
    for source, count in conn.execute(
        select(q.source, func.count()).where(mine).group_by(q.source).order_by(q.source)
    ):
        reasons = conn.execute(
            select(q.at, q.reason)
            .where(mine, q.source == source)
            .order_by(q.at.desc(), q.id.desc())
            .limit(latest)
        )
        summaries.append(
            QuarantineSummary(source, int(count), tuple(Reason(r.at, r.reason) for r in reasons))
        )
    complete = state.get(COMPLETE_KEY)
    sources = state.get(SPAN_SOURCES_KEY)
    return HostStatus(
        host=name,
        last_flush=last,
        rollups_complete_until=float(complete) if isinstance(complete, int | float) else None,
        rollup_failed_hours=tuple(float(x) for x in state.get(FAILED_KEY) or ()),
        span_sources=sources if isinstance(sources, dict) else {},
        quarantine=tuple(summaries),
    )


# ----- text ----------------------------------------------------------------------


def _when(t: float | None, now: float) -> str:
    if t is None:
        return "never"
    ago = max(0.0, now - t)
    if ago < 120:
        rel = f"{ago:.0f} s ago"
    elif ago < 7200:
        rel = f"{ago / 60:.0f} min ago"
    elif ago < 2 * 86400:
        rel = f"{ago / 3600:.0f} h ago"
    else:
        rel = f"{ago / 86400:.0f} days ago"
    return f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(t))} ({rel})"


def _hour(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:00 UTC", time.gmtime(t))


def render(statuses: Sequence[HostStatus], now: float) -> str:
    """The statuses as lines for a terminal; every stored string made printable."""
    if not statuses:
        return "no hosts in the store yet (is the agent running?)"
    lines: list[str] = []
    for st in statuses:
        if lines:
            lines.append("")
        lines.append(f"host {printable(st.host)}" if st.host is not None else "no host")
        if st.host is not None:
            lines.append(f"  last flush      {_when(st.last_flush, now)}")
            lines.append(f"  rollups until   {_when(st.rollups_complete_until, now)}")
            failed = st.rollup_failed_hours
            lines.append(
                "  failed hours    none"
                if not failed
                else f"  failed hours    {len(failed)} (raw rows kept until they roll up): "
                + ", ".join(_hour(x) for x in failed[:5])
                + (", ..." if len(failed) > 5 else "")
            )
            for name, counts in sorted(st.span_sources.items()):
                shown = ", ".join(
                    f"{printable(k)} {v}" for k, v in sorted(counts.items()) if v and k != "queued"
                )
                lines.append(f"  spans {printable(name):9} {shown or 'nothing dropped or changed'}")
        if not st.quarantine:
            lines.append("  quarantine      empty")
            continue
        total = ", ".join(f"{printable(s.source)} {s.count}" for s in st.quarantine)
        lines.append(f"  quarantine      {total}")
        for s in st.quarantine:
            for r in s.latest:
                lines.append(
                    f"    {printable(s.source):8} {_when(r.at, now)}  {printable(r.reason)}"
                )
    return "\n".join(lines)


def as_json(statuses: Sequence[HostStatus]) -> str:
    return json.dumps({"hosts": [asdict(s) for s in statuses]}, indent=2, sort_keys=True)


@cli.command()
@click.option("--json", "json_out", is_flag=True, help="JSON: {hosts: [...]}, text verbatim.")
@click.option(
    "--latest",
    type=click.IntRange(0, 1000),
    default=3,
    show_default=True,
    help="Quarantine reasons shown per source.",
)
@pass_app
def status(app: App, json_out: bool, latest: int) -> None:
    """Per host: last flush, rollup progress, spans dropped or changed, what was quarantined."""
    from infermeter.cli.report import reading

    with reading(app.config.store_url) as conn:
        statuses = read_status(conn, latest)
    click.echo(as_json(statuses) if json_out else render(statuses, time.time()))
