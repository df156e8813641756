"""Stored labels never drive the terminal, and machine outputs keep them verbatim.

Issue 10, case 5: a model name holding ESC sequences recoloured, cleared and
retitled the operator's terminal in ``report`` and ``top``, and
``[bold red]x[/]`` was read as rich markup, so it printed as a plain ``x``.
Here a real agent (real socket, real SQLite file) takes spans whose model,
tenant, request id and tags carry ESC sequences, C1 controls, a bidi
override and rich markup, from a process run under ``infermeter exec``; its
host name and price card version are hostile too. Then every command that
prints runs on that store as a user runs it: the text outputs must show each
control character as a visible escape (``\\e[2J``) and every bracket as
written, and JSON and CSV must give back the exact original strings.

The escaped forms expected below are written out by hand from the rule
(ESC is ``\\e``, BEL ``\\x07``, a C1 byte ``\\x9b``, U+202E ``\\u202e``, CR
``\\r``, LF ``\\n``), not computed with the code under test.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console
from support import infermeter_cmd
from support.agent_run import RunningAgent
from support.terminal import Screen

from infermeter.cli.recommend import render as render_recommendations
from infermeter.cli.report import render as render_report
from infermeter.cli.top import render as render_top
from infermeter.recommend.stored import StoredRecommendation, upsert
from infermeter.records import Recommendation, Savings
from infermeter.report.build import Amount, Costs, Group, RecommendationLine, Report, RequestStats
from infermeter.report.top import DeviceNow, Snapshot, UseNow
from infermeter.store.engine import open_engine

# Hostile labels and the visible form each must take on a terminal.
CLEAR = "m\x1b[2Jclr"  # ESC [ 2 J: clears the screen
TITLE = "m\x1b]0;pwned\x07t"  # OSC 0 ... BEL: sets the window title
RED = "m\x1b[31mred"  # SGR 31: everything after it red
C1 = "m\x9b2Jc1"  # CSI as the one C1 character U+009B: clears on some terminals
BIDI = "m\u202eevil"  # RIGHT-TO-LEFT OVERRIDE: shows "m" then "live" backwards
MARKUP = "[bold red]x[/]"  # rich markup: printed as markup it is a plain "x"
PLAIN = "x"
LINK = "[link=file:///e]y[/link]"  # 24 characters: report's label column is 24 wide
CSVISH = 'q"a,b\rc'  # a quote, a comma and a lone CR: Python 3.11's csv wrote it bare
SHOWN = {
    CLEAR: "m\\e[2Jclr",
    TITLE: "m\\e]0;pwned\\x07t",
    RED: "m\\e[31mred",
    C1: "m\\x9b2Jc1",
    BIDI: "m\\u202eevil",
    MARKUP: "[bold red]x[/]",
    PLAIN: "x",
    LINK: "[link=file:///e]y[/link]",
    CSVISH: 'q"a,b\\rc',
}
MODELS = tuple(SHOWN)
TENANTS = ("t\x1b]0;pwned\x07", MARKUP, PLAIN, "t\x9b\u202e", "t\nl,f")
TENANTS_SHOWN = {
    "t\x1b]0;pwned\x07": "t\\e]0;pwned\\x07",
    MARKUP: "[bold red]x[/]",
    PLAIN: "x",
    "t\x9b\u202e": "t\\x9b\\u202e",
    "t\nl,f": "t\\nl,f",  # a newline that would start a row of its own
}
HOST = "h\x1b[31mhost"
HOST_SHOWN = "h\\e[31mhost"
CARD = "v\x1b]0;pwned\x07[bold]1[/bold]"
CARD_SHOWN = "v\\e]0;pwned\\x07[bold]1[/bold]"
# A recommendation as a plugin might word it, stored in the agent's store.
SUBJECT = "[link=file:///etc/passwd]y[/link]\x1b[2J"
SUBJECT_SHOWN = "[link=file:///etc/passwd]y[/link]\\e[2J"
HOW = "how\x1b[31m[red]do[/red]\u202e"
HOW_SHOWN = "how\\e[31m[red]do[/red]\\u202e"
WHY = "why\x9b[bold]r[/bold]"
WHY_SHOWN = "why\\x9b[bold]r[/bold]"

# What must never reach a terminal from a label: C0 controls but the line
# end (ESC among them), DEL, C1, and the bidi controls.
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")

CLIENT = r"""
import json, sys, time
import infermeter

models, tenants = json.loads(sys.argv[1]), json.loads(sys.argv[2])
emitter = infermeter.instrument(plugins=False)
time.sleep(2.5)  # like a server, loaded before its first request: discovery sees it
end = time.monotonic() + float(sys.argv[3])
i = 0
while time.monotonic() < end or i < 3:
    for k, model in enumerate(models):
        tenant = tenants[k % len(tenants)]
        tags = {"k\x1b[31m": "v\x9b[link=x]z[/link]"}
        with infermeter.request(tenant=tenant, request_id=f"r\x1b[2J{i}-{k}"):
            t0 = time.perf_counter()
            n = 0
            while time.perf_counter() - t0 < 0.02:  # CPU work for the estimate to see
                n += 1
            emitter.emit_call(model, t0, time.perf_counter(), 1, tags, None, None, None, None)
    i += 1
print("done", flush=True)
time.sleep(3)  # a server lives on: the agent attributes its last intervals
"""


@dataclass(frozen=True)
class Hostile:
    db: Path
    config: Path
    env: dict[str, str]
    agent_log: str


def _env(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERMETER_")}
    env.update(HOME=str(folder), XDG_CONFIG_HOME=str(folder / "c"), XDG_DATA_HOME=str(folder / "d"))
    env["COLUMNS"] = "160"  # rich's width off a terminal: no fold inside a label
    env["INFERMETER_SOCKET"] = str(folder / "run" / "spans.sock")
    return env


def _toml(text: str) -> str:
    """A TOML basic string: every control character and quote as a \\u escape."""
    return (
        '"'
        + "".join(c if c.isalnum() or c in "[]/;:. " else f"\\u{ord(c):04x}" for c in text)
        + '"'
    )


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    folder = tmp_path_factory.mktemp("hostile")
    (folder / "run").mkdir()
    env = _env(folder)
    config = folder / "agent.toml"
    config.write_text(
        f"[agent]\ntick_s = 0.25\nflush_s = 0.5\nspan_lag_s = 0.5\nhost = {_toml(HOST)}\n"
        f"[prices]\nversion = {_toml(CARD)}\n"
    )
    db = folder / "store.db"
    base = [*infermeter_cmd(), "--config", str(config), "--db", f"sqlite:///{db}"]
    agent = RunningAgent(env, config, f"sqlite:///{db}", folder / "agent.log")
    sock = Path(env["INFERMETER_SOCKET"])
    try:
        agent.wait_for(sock.exists, "the span socket")
        client = subprocess.run(
            [
                *base,
                "exec",
                "--",
                sys.executable,
                "-c",
                CLIENT,
                json.dumps(MODELS),
                json.dumps(TENANTS),
                "6",
            ],
            env=env,
            capture_output=True,
            timeout=180,
        )
        assert client.returncode == 0, client.stderr.decode(errors="replace")
        assert b"done" in client.stdout
        time.sleep(1.0)
    finally:
        code = agent.stop()
    err = agent.log.read_bytes()
    assert code == 0, err.decode(errors="replace")
    engine = open_engine(f"sqlite:///{db}")
    try:
        upsert(engine, [_advice(SUBJECT)], time.time())
    finally:
        engine.dispose()
    yield Hostile(db, config, env, err.decode())


def _advice(subject: str) -> Recommendation:
    return Recommendation(
        kind="batch",
        subject_kind="model",
        subject=subject,
        evidence={"currency": "USD", "extrapolation": "ext\x1b]0;pwned\x07 [dim]"},
        savings=Savings(12.0, 6.0, 18.0, 3.0, 1.0),
        confidence="high",
        confidence_reason=WHY,
        how_to_apply=HOW,
    )


def run(h: Hostile, *args: str) -> str:
    """One command on the hostile store: its stdout, which must be valid UTF-8."""
    done = subprocess.run(
        [*infermeter_cmd(), "--config", str(h.config), "--db", f"sqlite:///{h.db}", *args],
        env=h.env,
        capture_output=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert not RAW.search(done.stderr.decode()), done.stderr
    return done.stdout.decode()  # bytes, so a CR stays a CR (text mode would turn it to LF)


def assert_terminal_safe(text: str) -> None:
    hit = RAW.search(text)
    where = "" if hit is None else text[max(0, hit.start() - 80) : hit.end() + 80]
    assert hit is None, f"a raw control character in {where!r}"


def label_rows(text: str) -> set[str]:
    """The first cell of each table row: what precedes the first run of 2+ spaces."""
    return {re.split(r"\s{2,}", line.strip())[0] for line in text.splitlines() if line.strip()}


# ----- against the real agent's store ------------------------------------------------------


@pytest.mark.slow
def test_the_agent_stored_the_labels_verbatim_and_logs_them_escaped(hostile: Hostile) -> None:
    with sqlite3.connect(hostile.db) as conn:
        models = {r[0] for r in conn.execute("SELECT name FROM models")}
        tenants = {r[0] for r in conn.execute("SELECT DISTINCT tenant FROM requests")}
        hosts = {r[0] for r in conn.execute("SELECT name FROM hosts")}
    assert set(MODELS) <= models
    assert set(TENANTS) <= tenants
    assert hosts == {HOST}
    # The agent's own log names its host: escaped there too.
    assert f"running on host {HOST_SHOWN}" in hostile.agent_log
    assert_terminal_safe(hostile.agent_log)


@pytest.mark.slow
def test_report_shows_every_label_escaped_and_markup_as_written(hostile: Hostile) -> None:
    out = run(hostile, "report")
    assert_terminal_safe(out)
    rows = label_rows(out)
    for model, shown in SHOWN.items():
        assert shown in rows, (model, out)
    # "[bold red]x[/]" and "x" head rows of their own: as markup both would read "x".
    assert MARKUP in rows and PLAIN in rows
    assert not any(line.startswith(("x\\", "x\x1b")) for line in out.splitlines())
    assert f"price card {CARD_SHOWN}" in out
    assert SUBJECT_SHOWN in out and HOW_SHOWN in out


@pytest.mark.slow
def test_report_by_tenant_and_by_host(hostile: Hostile) -> None:
    out = run(hostile, "report", "--by", "tenant")
    assert_terminal_safe(out)
    rows = label_rows(out)
    assert set(TENANTS_SHOWN.values()) <= rows, out
    out = run(hostile, "report", "--by", "host")
    assert_terminal_safe(out)
    assert HOST_SHOWN in label_rows(out), out


@pytest.mark.slow
def test_report_json_and_csv_keep_the_exact_strings(hostile: Hostile) -> None:
    data = json.loads(run(hostile, "report", "--json"))
    assert set(MODELS) <= {g["label"] for g in data["groups"]}
    assert CARD in data["price_cards"]
    assert SUBJECT in {r["subject"] for r in data["recommendations"]}
    assert HOW in {r["how_to_apply"] for r in data["recommendations"]}
    tenants = json.loads(run(hostile, "report", "--by", "tenant", "--json"))
    assert set(TENANTS) <= {g["label"] for g in tenants["groups"]}

    text = run(hostile, "report", "--csv")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert all(len(r) == len(rows[0]) for r in rows), "a label broke a row"
    assert set(MODELS) <= {r[2] for r in rows[1:]}


@pytest.mark.slow
def test_focus_export_keeps_the_exact_strings(hostile: Hostile) -> None:
    with sqlite3.connect(hostile.db) as conn:
        first = conn.execute("SELECT min(t0) FROM requests").fetchone()[0]
    month = datetime.fromtimestamp(first, tz=UTC).strftime("%Y-%m")
    text = run(hostile, "export", "focus", "--month", month, "--no-progress")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert set(MODELS) <= {r["ResourceName"] for r in rows}
    assert set(TENANTS) <= {r["SubAccountId"] for r in rows}
    tags = [json.loads(r["Tags"]) for r in rows if r["Tags"]]
    assert {t.get("model") for t in tags} >= set(MODELS)


@pytest.mark.slow
def test_recommend_and_apply_print_the_advice_escaped(hostile: Hostile) -> None:
    out = run(hostile, "recommend", "--no-refresh")
    assert_terminal_safe(out)
    assert f"on {SUBJECT_SHOWN}" in out
    assert f"how: {HOW_SHOWN}" in out and f"why: high confidence, {WHY_SHOWN}" in out
    assert "ext\\e]0;pwned\\x07 [dim]" in out
    listed = json.loads(run(hostile, "recommend", "--no-refresh", "--json"))
    advice = next(r for r in listed if r["subject"] == SUBJECT)
    assert advice["how_to_apply"] == HOW
    out = run(hostile, "apply", advice["id"])
    assert_terminal_safe(out)
    assert f"batch on {SUBJECT_SHOWN}: {HOW_SHOWN}" in out
    # The recommenders themselves run over the hostile store, and print as safely.
    assert_terminal_safe(run(hostile, "recommend"))


@pytest.mark.slow
def test_top_once_shows_the_models_escaped(hostile: Hostile) -> None:
    out = run(hostile, "top", "--once")
    assert_terminal_safe(out)
    rows = label_rows(out)
    for model in (CLEAR, TITLE, RED, C1, BIDI, MARKUP, PLAIN):
        assert SHOWN[model] in rows, (model, out)


@pytest.mark.slow
def test_top_on_a_terminal_never_passes_a_label_through(hostile: Hostile, tmp_path: Path) -> None:
    # Tall enough for every model row however many other inference
    # processes on this machine the agent that made the store found.
    screen = Screen(f"sqlite:///{hostile.db}", tmp_path, rows=100)
    wanted = [SHOWN[m] for m in (CLEAR, TITLE, RED, C1, BIDI, MARKUP)]
    text = screen.read_until(lambda t: all(w in t for w in wanted) and "req/s" in t, 120)
    screen.send(b"q")
    screen.read_until(lambda t: "EXIT=" in t)
    assert screen.wait() == 0
    assert all(w in text for w in wanted), text[-3000:]
    raw = screen.raw.decode()
    # rich styles the frame with its own sequences; none of the labels' may appear.
    for model in (CLEAR, TITLE, RED):
        assert model[1:] not in raw
    assert "\x1b]" not in raw  # no OSC at all: nothing sets the title
    assert not re.search("[\x80-\x9f\u202a-\u202e]", raw)


@pytest.mark.slow
def test_prices_and_config_show_print_the_card_as_written(tmp_path: Path) -> None:
    env = _env(tmp_path)
    config = tmp_path / "card.toml"
    config.write_text(
        f"[agent]\nhost = {_toml(HOST)}\n[prices]\nversion = {_toml(CARD)}\n"
        '[prices.devices]\n"A100[a-z]*" = {cloud_hourly = 2.5}\n'
    )
    cmd = [*infermeter_cmd(), "--config", str(config)]
    done = subprocess.run([*cmd, "prices"], env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    assert_terminal_safe(out)
    assert f"price card {CARD_SHOWN} (USD)" in out
    assert "device /A100[a-z]*/" in out  # as markup, "[a-z]" would vanish
    shown = json.loads(
        subprocess.run(
            [*cmd, "prices", "--json"], env=env, capture_output=True, timeout=60, check=True
        ).stdout
    )
    assert shown["version"] == CARD
    done = subprocess.run([*cmd, "config", "show"], env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    assert_terminal_safe(out)
    # json.dumps writes ESC as \u001b; the markup after it stays as written.
    assert '"v\\u001b]0;pwned\\u0007[bold]1[/bold]"' in out


# ----- the renderers, on data made here ------------------------------------------------------


def printed(renderable: object, width: int = 100) -> str:
    """What ``renderable`` prints on a console ``width`` wide, without colour."""
    buf = io.StringIO()
    Console(width=width, file=buf, color_system=None).print(renderable)
    return buf.getvalue()


def _costs() -> Costs:
    amount = Amount(1.0)
    return Costs(0.5, amount, amount, Amount(0.0), Amount(2.0), Amount(0.0), Amount(0.0))


def _group(label: str) -> Group:
    stats = RequestStats(3, 3, 3, 0, 0, 0, 0.1, 0.2)
    return Group(label, label, "group", _costs(), stats, 1.0, Amount(0.3), 0.5, {}, {})


def test_report_render_escapes_device_names_bases_and_advice() -> None:
    """Grouped by device, the labels are GPU names a driver (or a plugin) reported."""
    device = "GPU\x1b[2J[b]0[/b] #0"
    basis = "sm\x1b[31m"
    report = Report(
        t_from=0.0,
        t_to=3600.0,
        by="device",
        share_idle=False,
        generated_at=3600.0,
        currency="U\x1b[2J",
        price_cards=(CARD,),
        totals=_costs(),
        total_requests=RequestStats(3, 3, 3, 0, 0, 0, 0.1, 0.2),
        utilisation=0.5,
        methods={"measured": 1.0},
        bases={basis: 1.0},
        groups=(_group(device), _group("GPU #0")),
        recommendations=(
            RecommendationLine("power-cap", "device", device, 1.0, 1.0, 1.0, "high", HOW),
        ),
        rollup_hours=0,
        rollup_days=0,
        raw_ranges=((0.0, 3600.0),),
        stored=(0.0, 3600.0),
    )
    out = printed(render_report(report))
    assert_terminal_safe(out)
    assert "GPU\\e[2J[b]0[/b] #0" in label_rows(out) and "GPU #0" in label_rows(out)
    assert "sm\\e[31m 100%" in out  # the split-by basis
    assert "U\\e[2J 1" in out  # the unknown currency code before a figure
    assert "power-cap GPU\\e[2J[b]0[/b] #0 (device)" in out and HOW_SHOWN in out


def test_top_render_escapes_devices_targets_and_models() -> None:
    use = UseNow("run\x1b]0;pwned\x07 pid 7", 10.0, 1.0, 2.0, 1.0)
    snap = Snapshot(
        as_of=100.0,
        recent_s=30.0,
        devices=(
            DeviceNow("GPU\u202e[i]x[/i] #0", "h", "gpu", 50.0, 0.5, 1, 2**30, "measured", 0.0),
        ),
        targets=(use,),
        models=(UseNow(MARKUP, 1.0, None, None, 0.0), UseNow(PLAIN, 1.0, None, None, 0.0)),
        idle_w=1.0,
        keepwarm_w=0.0,
        cost_per_hour=1.0,
        cost_today=2.0,
        currency="USD",
    )
    out = printed(render_top(snap, "sqlite:////tmp/\x1b[2J.db", 100.0))
    assert_terminal_safe(out)
    rows = label_rows(out)
    assert {"GPU\\u202e[i]x[/i] #0", "run\\e]0;pwned\\x07 pid 7", MARKUP, PLAIN} <= rows
    assert "/tmp/\\e[2J.db" in out


def test_recommend_render_escapes_the_subject_in_the_wide_table() -> None:
    stored = StoredRecommendation("a" * 16, _advice(SUBJECT), "open", 0.0, 0.0)
    buf = io.StringIO()  # 160 wide: the subject has a column in the table
    render_recommendations([stored], Console(width=160, file=buf, color_system=None))
    out = buf.getvalue()
    assert_terminal_safe(out)
    table_row = next(line for line in out.splitlines() if line.lstrip().startswith("1 "))
    assert SUBJECT_SHOWN in table_row
