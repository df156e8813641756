"""Storing, ranking and acting on recommendations: the store, the hook's guard rails,
``infermeter recommend`` and ``infermeter apply`` (power cap only with --yes).
"""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from rich.console import Console
from support import FIXTURES, run_cli
from support.recommend_stats import GPU, PRICES, WINDOW, bursty, config, stats

from infermeter import hookimpl
from infermeter.cli import cli
from infermeter.cli import commands as _commands  # noqa: F401  (registers the commands)
from infermeter.cli import recommend as recommend_cli
from infermeter.config import CORE_OPTIONS, build_config
from infermeter.errors import InfermeterError
from infermeter.plugin_manager import make_plugin_manager
from infermeter.plugins.nvml.replay import NvmlStandIn
from infermeter.plugins.recommend import powercap as recommend_powercap
from infermeter.recommend.money import Subject, WindowSaving, advice
from infermeter.recommend.options import OPTIONS
from infermeter.recommend.run import collect
from infermeter.recommend.stats import Stats
from infermeter.recommend.stored import find, listing, set_status, upsert
from infermeter.records import Recommendation
from infermeter.sidecar.replay import replay
from infermeter.store import migrate
from infermeter.store.engine import open_engine
from infermeter.store.writer import Store

SERVING = FIXTURES / "h100-serving"
ENCODER = FIXTURES / "h100-resnet-encoder"
H100_UUID = "GPU-18b326f0-07a3-c660-b0fc-a48acddbdee2"  # the recordings' card


class SettableStandIn(NvmlStandIn):
    """The replay stand-in, plus a power-limit setter that only records what was asked.

    The stand-in itself deliberately has no setter (a replay never changes a
    card); this test double adds one to see exactly what apply would set.
    """

    def __init__(self) -> None:
        recorded = NvmlStandIn.from_trace(ENCODER)
        super().__init__(recorded.gpus, recorded.clock)
        self.limits_set: dict[int, int] = {}

    def nvmlDeviceSetPowerManagementLimit(self, handle: Any, limit: int) -> None:
        self._check("nvmlDeviceSetPowerManagementLimit", handle)
        self.limits_set[handle.gpu] = int(limit)

    def nvmlDeviceGetPowerManagementLimit(self, handle: Any) -> int:
        default = super().nvmlDeviceGetPowerManagementLimit(handle)
        return self.limits_set.get(handle.gpu, default)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The serving trace replayed into a SQLite file, as `infermeter replay` does."""
    db = tmp_path_factory.mktemp("cli") / "s.db"
    pm = make_plugin_manager()
    cfg = build_config(pm.config_options(), {}, environ={})
    engine = open_engine(f"sqlite:///{db}")
    migrate.upgrade(engine)
    store = Store(engine, SERVING.name)
    replay(SERVING, cfg, pm, store)
    store.close()
    yield db


@pytest.fixture
def db(served: Path, tmp_path: Path) -> Path:
    """A fresh copy per test, so statuses set by one test do not leak into another."""
    copy = tmp_path / "s.db"
    with sqlite3.connect(served) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    return copy


def invoke(db: Path, tmp_path: Path, *args: str) -> Result:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "INFERMETER_CONFIG": None}
    return CliRunner().invoke(cli, ["--db", f"sqlite:///{db}", *args], env=env)


def rec(usd_window: float, subject: str = "m:fp32@h/GPU", cost: float = 1.0) -> Recommendation:
    return advice(
        "batch",
        Subject("model", subject, "h", cost),
        WindowSaving(energy_j=0.0, other_usd=usd_window),
        WINDOW,
        PRICES,
        "medium",
        "because",
        "do it",
        {},
    )


# ----- the guard rails of the hook ------------------------------------------------------


def test_collect_checks_caps_filters_and_ranks() -> None:
    pm = make_plugin_manager(load=False)
    cfg = build_config([*CORE_OPTIONS, *OPTIONS], {}, environ={})
    good, small = rec(0.01, "a"), rec(0.00001, "b")
    over = replace(rec(0.5, "c"), savings=replace(rec(0.5, "c").savings, usd_high=1e9))
    negative = replace(rec(0.2, "d"), savings=replace(rec(0.2, "d").savings, usd=-1.0))
    outside = replace(rec(0.2, "e"), savings=replace(rec(0.2, "e").savings, usd_low=1e6))
    vague = replace(rec(0.2, "f"), confidence="certain")
    better_a = rec(0.02, "a")

    class Mine:
        @hookimpl
        def infermeter_recommend(self, stats: Any, config: Any) -> list[Any]:
            return [good, small, over, negative, outside, vague, "not advice", better_a]

    plugin = Mine()
    pm.register(plugin, name="mine")
    try:
        out = collect(pm, Stats("h", WINDOW, PRICES), cfg)
    finally:
        pm.unregister(plugin)
    assert [r.subject for r in out] == ["c", "a"]  # ranked; b under the floor; d, e, f dropped
    capped = out[0]
    assert capped.savings.usd_high == capped.evidence["measured_cost_month"]
    assert out[1] is better_a  # the same advice twice: the larger saving kept
    assert collect(pm, Stats("h", WINDOW, PRICES), cfg) == []  # unregistered: nothing


# ----- the store ---------------------------------------------------------------------


def test_upsert_keeps_the_operators_status(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'r.db'}")
    migrate.upgrade(engine)
    first = rec(0.01, "x")
    assert upsert(engine, [first], now=100.0) == 1
    set_status(engine, first.stable_id[:6], "dismissed")
    again = rec(0.03, "x")
    assert upsert(engine, [again], now=200.0) == 0
    (stored,) = listing(engine, ("open", "dismissed", "applied"))
    assert stored.status == "dismissed"
    assert (stored.first_seen, stored.last_seen) == (100.0, 200.0)
    assert stored.recommendation.savings == again.savings  # the numbers are the newest
    assert listing(engine) == []
    assert find(engine, first.stable_id).stable_id == first.stable_id
    for bad, message in (("abc", "too short"), ("ffffffff", "no recommendation")):
        with pytest.raises(InfermeterError, match=message):
            find(engine, bad)
    with pytest.raises(InfermeterError, match="status must be"):
        set_status(engine, first.stable_id, "done")
    engine.dispose()


# ----- infermeter recommend -----------------------------------------------------------


def test_recommend_lists_ranked_advice(db: Path, tmp_path: Path) -> None:
    result = invoke(db, tmp_path, "recommend")
    assert result.exit_code == 0, result.output
    assert "Recommendations, ranked by saving per month" in result.output
    assert "keep-warm" in result.output and "how:" in result.output
    as_json = json.loads(invoke(db, tmp_path, "recommend", "--json", "--no-refresh").output)
    usd = [r["savings_month"]["usd"] for r in as_json]
    assert usd == sorted(usd, reverse=True) and len(as_json) >= 3
    assert {r["evidence"]["host"] for r in as_json} == {"h100-serving"}
    assert all(r["status"] == "open" and len(r["id"]) == 16 for r in as_json)


def test_dismissed_advice_stays_dismissed(db: Path, tmp_path: Path) -> None:
    listed = json.loads(invoke(db, tmp_path, "recommend", "--json").output)
    top = listed[0]["id"]
    result = invoke(db, tmp_path, "recommend", "--dismiss", top[:8])
    assert result.exit_code == 0 and result.output.startswith(f"dismissed {top}")
    again = json.loads(invoke(db, tmp_path, "recommend", "--json").output)  # a new run
    assert top not in {r["id"] for r in again}
    assert len(again) == len(listed) - 1
    everything = json.loads(invoke(db, tmp_path, "recommend", "--json", "--all").output)
    assert {r["id"]: r["status"] for r in everything}[top] == "dismissed"
    unknown = invoke(db, tmp_path, "recommend", "--dismiss", "ffffffff")
    assert unknown.exit_code == 2


def test_render_fits_a_narrow_console(db: Path, tmp_path: Path) -> None:
    invoke(db, tmp_path, "recommend")
    engine = open_engine(f"sqlite:///{db}")
    recs = listing(engine)
    engine.dispose()
    out = io.StringIO()
    recommend_cli.render(recs, Console(width=100, file=out))
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 100
    assert recs[0].stable_id[:8] in text and "extrapolate" in text
    empty = io.StringIO()
    recommend_cli.render([], Console(width=100, file=empty))
    assert "no recommendations" in empty.getvalue()


def test_render_prints_plugin_text_as_text(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'r.db'}")
    migrate.upgrade(engine)
    upsert(engine, [replace(rec(0.01, "x"), how_to_apply="set [bold]limit[/bold] = 5")], now=1.0)
    out = io.StringIO()
    recommend_cli.render(listing(engine), Console(width=100, file=out))
    engine.dispose()
    assert "set [bold]limit[/bold] = 5" in out.getvalue()


def test_apply_other_kinds_only_marks_with_consent(db: Path, tmp_path: Path) -> None:
    listed = json.loads(invoke(db, tmp_path, "recommend", "--json").output)
    keep_warm = next(r for r in listed if r["kind"] == "keep-warm")
    dry = invoke(db, tmp_path, "apply", keep_warm["id"])
    assert dry.exit_code == 0 and "rerun with --yes" in dry.output
    assert keep_warm["how_to_apply"] in dry.output
    assert _status(db, keep_warm["id"]) == "open"
    done = invoke(db, tmp_path, "apply", keep_warm["id"], "--yes")
    assert done.exit_code == 0 and _status(db, keep_warm["id"]) == "applied"


def _status(db: Path, ident: str) -> str:
    with sqlite3.connect(db) as conn:
        return str(
            conn.execute(
                "SELECT status FROM recommendations WHERE stable_id = ?", (ident,)
            ).fetchone()[0]
        )


# ----- infermeter apply: the power cap -------------------------------------------------


def power_cap_advice() -> Recommendation:
    device = replace(bursty(), info=replace(GPU, uid=H100_UUID))
    (cap,) = recommend_powercap.infermeter_recommend(stats=stats(devices=[device]), config=config())
    return cap


@pytest.fixture
def capped_db(db: Path) -> tuple[Path, Recommendation]:
    cap = power_cap_advice()
    engine = open_engine(f"sqlite:///{db}")
    upsert(engine, [cap], now=1.0)
    engine.dispose()
    return db, cap


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> SettableStandIn:
    """The NVML stand-in the power-cap plugin is given instead of pynvml, for this test."""
    nvml = SettableStandIn()
    monkeypatch.setattr(recommend_powercap, "nvml_module", lambda: nvml)
    return nvml


def test_apply_power_cap_without_yes_sets_nothing(
    capped_db: tuple[Path, Recommendation], tmp_path: Path, standin: SettableStandIn
) -> None:
    db, cap = capped_db
    result = invoke(db, tmp_path, "apply", cap.stable_id)
    assert result.exit_code == 0
    watts = cap.evidence["suggested_limit_w"]
    assert f"to {watts:g} W" in result.output and "Nothing was set" in result.output
    assert standin.limits_set == {} and standin.init_count == 0
    assert standin.calls["nvmlDeviceSetPowerManagementLimit"] == 0
    assert _status(db, cap.stable_id) == "open"


def test_apply_power_cap_with_yes_sets_it_through_nvml(
    capped_db: tuple[Path, Recommendation], tmp_path: Path, standin: SettableStandIn
) -> None:
    db, cap = capped_db
    result = invoke(db, tmp_path, "apply", cap.stable_id[:10], "--yes")
    assert result.exit_code == 0, result.output
    watts = cap.evidence["suggested_limit_w"]
    assert standin.limits_set == {0: round(watts * 1000)}
    assert f"set the power limit of GPU {H100_UUID} to {watts:g} W" in result.output
    assert (standin.init_count, standin.shutdown_count) == (1, 1)
    assert _status(db, cap.stable_id) == "applied"


def test_apply_power_cap_refuses_a_limit_outside_the_range() -> None:
    standin = SettableStandIn()
    with pytest.raises(InfermeterError, match="accepts 200-700 W"):
        recommend_powercap.apply_power_cap(standin, H100_UUID, 150.0)
    with pytest.raises(InfermeterError, match="is not on this host"):
        recommend_powercap.apply_power_cap(standin, "GPU-elsewhere", 300.0)
    assert standin.limits_set == {} and standin.shutdown_count == 2


def test_apply_power_cap_without_the_gpu_exits_2_with_one_line(
    capped_db: tuple[Path, Recommendation], tmp_path: Path, cli_env: dict[str, str]
) -> None:
    db, cap = capped_db
    result = run_cli(cli_env, "--db", f"sqlite:///{db}", "apply", cap.stable_id, "--yes")
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    # No NVML here, or (on a GPU host) not the recordings' card.
    assert lines[0].startswith("infermeter: error: cannot set a power limit: ")
    assert _status(db, cap.stable_id) == "open"


def test_apply_hands_advice_to_the_plugin_that_carries_it_out(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """infermeter_apply: a third-party plugin (tests/support/plugin_pkg) carries out its own advice.

    Without --yes it only says what it would do; with --yes it does it once
    (the marker file gains the subject) and the advice is marked applied.
    """
    db = tmp_path / "store.db"
    marker = tmp_path / "restarted.txt"
    mine = replace(rec(5.0), kind="synthetic-restart", evidence={"marker": str(marker)})
    engine = open_engine(f"sqlite:///{db}")
    migrate.upgrade(engine)
    upsert(engine, [mine], now=1.0)
    engine.dispose()

    def apply(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(cli_env, "--db", f"sqlite:///{db}", "apply", mine.stable_id, *args)

    dry = apply()
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip() == f"would restart {mine.subject}"
    assert not marker.exists() and _status(db, mine.stable_id) == "open"
    done = apply("--yes")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"restarted {mine.subject}; {mine.stable_id} applied"
    assert marker.read_text() == mine.subject + "\n"
    assert _status(db, mine.stable_id) == "applied"
