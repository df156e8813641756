"""Every hook is documented, and a test registers an implementation and sees it called.

As datasette does (``test_plugin_hooks_have_tests``): a hook whose name no
``test_hook_*`` function in this suite mentions fails here, so a new hook
cannot land without a test that watches the core call it. Each test below
registers a small plugin on a plugin manager that also holds the built-in
ones (loaded from the entry points, as in production) and drives the real
caller: the agent's tick and flush, ``replay``, ``record``, ``apply``.
"""

from __future__ import annotations

import ast
import inspect
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from support import TESTS

from infermeter import hookimpl, hookspecs
from infermeter.config import Config, Option, build_config
from infermeter.discover.processes import ProcessInfo
from infermeter.errors import ConfigError
from infermeter.plugin_manager import make_plugin_manager
from infermeter.recommend.stats import Stats
from infermeter.records import (
    Device,
    DeviceKind,
    Method,
    Price,
    PriceCard,
    Reading,
    Recommendation,
    Savings,
    Share,
    Span,
    Target,
)
from infermeter.sidecar.agent import Agent
from infermeter.sidecar.record import record
from infermeter.sidecar.replay import replay
from infermeter.sidecar.trace_check import TraceError, TraceProblem
from infermeter.store import migrate, schema
from infermeter.store.engine import open_engine
from infermeter.store.writer import Store

HOOKS = sorted(n for n in dir(hookspecs) if n.startswith("infermeter_"))


def test_every_hook_is_documented() -> None:
    for name in HOOKS:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert len(doc.split()) >= 15, f"{name} needs a docstring saying when it is called"


def test_every_hook_has_a_test() -> None:
    """Each hook is named in a ``test_hook_*`` function (its name, docstring or body)."""
    mentioned: set[str] = set()
    for path in TESTS.rglob("test_*.py"):
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_hook_"):
                text = ast.get_source_segment(source, node) or ""
                mentioned.update(h for h in HOOKS if h in text)
    assert sorted(set(HOOKS) - mentioned) == []


def test_hook_infermeter_config_options() -> None:
    """A plugin's declared key is read from the file; a typo in its section is an error."""

    class Options:
        @hookimpl
        def infermeter_config_options(self) -> Sequence[Option]:
            return [Option("mine", "level", 1, "How much.")]

    pm = make_plugin_manager()
    pm.register(Options(), name="mine")
    config = build_config(pm.config_options(), {"mine": {"level": 3}}, environ={})
    assert config["mine.level"] == 3 and config.sources["mine.level"] == "file config"
    with pytest.raises(ConfigError, match=r"unknown config key `mine\.levle`"):
        build_config(pm.config_options(), {"mine": {"levle": 3}}, environ={})


GPU = Device("GPU-mine", DeviceKind.GPU, "Mine GPU", power_limit_w=500.0)


class AgentHooks:
    """A meter of 100 W, a span source, a discovery rule, a price and an exporter."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.called: dict[str, int] = {}
        self.exported: list[Share] = []
        self.last: float | None = None
        self.spans_given = False

    def _saw(self, hook: str) -> None:
        self.called[hook] = self.called.get(hook, 0) + 1

    # meters
    name = "mine"

    def read(self, now: float, targets: Mapping[int, Target]) -> Sequence[Reading]:
        self._saw("read")
        last, self.last = self.last, now
        if last is None:
            return []
        return [Reading(GPU, last, now, 100.0 * (now - last), Method.MEASURED, {self.pid: 1.0})]

    def close(self) -> None:
        pass

    # span source
    def drain(self) -> Sequence[Span]:
        self._saw("drain")
        if self.spans_given or self.last is None:
            return []
        self.spans_given = True
        return [Span(self.pid, "mine-model", self.last, self.last + 0.5)]

    def dropped(self) -> int:
        return 0

    @hookimpl
    def infermeter_meters(self, config: Config) -> list[Any]:
        self._saw("infermeter_meters")
        return [self]

    @hookimpl
    def infermeter_span_sources(self, config: Config) -> list[Any]:
        self._saw("infermeter_span_sources")
        return [self]

    @hookimpl(tryfirst=True)
    def infermeter_discover(self, process: ProcessInfo, config: Config) -> Target | None:
        if process.pid != self.pid:
            return None
        self._saw("infermeter_discover")
        return Target(config.host, process.pid, process.start_time, labels={"model": "mine-model"})

    @hookimpl(tryfirst=True)
    def infermeter_price(
        self, share: Share, device: Device, card: PriceCard, window_j: float
    ) -> Price | None:
        self._saw("infermeter_price")
        return Price(energy_cost=0.25, capacity_cost=0.0, carbon_g=1.0)

    @hookimpl
    def infermeter_export(self, batch: Sequence[Share], config: Config) -> None:
        self._saw("infermeter_export")
        self.exported.extend(batch)


def test_hook_agent_calls_meters_span_sources_discover_price_and_export(tmp_path: Path) -> None:
    """infermeter_meters and infermeter_span_sources at start, infermeter_discover for a
    new process, infermeter_price for every share at flush, infermeter_export with
    every batch once it is committed; all through a real Agent on a real SQLite file."""
    engine = open_engine(f"sqlite:///{tmp_path / 'store.db'}")
    migrate.upgrade(engine)
    # Only this plugin meters and discovers: the host's own CPU would add its energy.
    pm = make_plugin_manager(
        blocked=("core.procfs", "core.span_socket", "core.nvml", "core.rapl", "core.cpu_estimate")
    )
    plugin = AgentHooks()
    pm.register(plugin, name="mine")
    config = build_config(
        pm.config_options(), {"agent": {"host": "h", "span_lag_s": 0.0}}, environ={}
    )
    agent = Agent(config, pm, Store(engine, "h"))
    agent.start()
    assert plugin in agent.meters and plugin in agent.span_sources
    t = time.time()
    for i in range(4):
        agent.tick(t + i)
    agent.flush(t + 3, final=True)
    agent.close()
    with engine.connect() as conn:
        shares = conn.execute(select(schema.usage_shares.c.energy_cost)).scalars().all()
        calls = conn.execute(select(schema.requests.c.energy_j)).scalars().all()
    engine.dispose()
    assert plugin.called["infermeter_meters"] == plugin.called["infermeter_span_sources"] == 1
    assert plugin.called["infermeter_discover"] == 1  # once per process, never again
    assert plugin.called["read"] == 4 and plugin.called["drain"] >= 4
    # Every stored share was priced by the plugin, and exported once committed.
    assert shares and all(c == 0.25 for c in shares)
    assert plugin.called["infermeter_price"] >= len(shares)
    assert plugin.called["infermeter_export"] >= 1 and len(plugin.exported) == len(shares)
    # 300 J went to our process; its one call of 0.5 s got its part of it.
    assert sum(s.energy_j for s in plugin.exported) == pytest.approx(300.0)
    assert len(calls) == 1 and 0 < calls[0] < 300.0


class ReplayHooks:
    """A trace format of its own: mine.txt holds "t0 t1" and a power of 50 W throughout."""

    def __init__(self, problem: bool = False) -> None:
        self.problem = problem
        self.called: list[str] = []

    @hookimpl
    def infermeter_replay_window(self, trace_dir: Path) -> tuple[float, float] | None:
        self.called.append("infermeter_replay_window")
        if not (trace_dir / "mine.txt").exists():
            return None
        t0, t1 = (float(x) for x in (trace_dir / "mine.txt").read_text().split())
        return t0, t1

    @hookimpl
    def infermeter_replay_check(self, trace_dir: Path) -> Sequence[TraceProblem]:
        self.called.append("infermeter_replay_check")
        if self.problem:
            return [TraceProblem(trace_dir / "mine.txt", 1, "not mine")]
        return []

    @hookimpl
    def infermeter_replay_targets(self, trace_dir: Path, config: Config) -> Sequence[Target]:
        self.called.append("infermeter_replay_targets")
        return [Target("replayed", 4242, 1.0, labels={"model": "replayed-model"})]

    @hookimpl
    def infermeter_replay_meters(self, trace_dir: Path, config: Config) -> Sequence[Any]:
        self.called.append("infermeter_replay_meters")
        meter = AgentHooks()
        meter.pid = 4242
        return [meter]


def test_hook_replay_calls_replay_window_check_targets_and_meters(tmp_path: Path) -> None:
    """infermeter_replay_check before anything is written (a problem refuses the trace),
    then infermeter_replay_window, infermeter_replay_targets and infermeter_replay_meters;
    the plugin's meter drives the ticks, 50 W... here 100 W for 20 s, stored whole."""
    trace = tmp_path / "trace"
    trace.mkdir()
    t0 = 1_800_000_000.0
    (trace / "mine.txt").write_text(f"{t0} {t0 + 20}")
    url = f"sqlite:///{tmp_path / 'store.db'}"
    engine = open_engine(url)
    migrate.upgrade(engine)
    pm = make_plugin_manager()
    refusing = ReplayHooks(problem=True)
    pm.register(refusing, name="mine")
    config = build_config(pm.config_options(), {}, environ={})
    with pytest.raises(TraceError, match=r"mine\.txt:1: not mine"):
        replay(trace, config, pm, Store(engine, "replayed"))
    assert refusing.called == ["infermeter_replay_check"]  # refused before anything else
    pm.unregister(refusing)
    plugin = ReplayHooks()
    pm.register(plugin, name="mine")
    result = replay(trace, config, pm, Store(engine, "replayed"))
    assert set(plugin.called) == {
        "infermeter_replay_check",
        "infermeter_replay_window",
        "infermeter_replay_targets",
        "infermeter_replay_meters",
    }
    assert (result.t_start, result.t_end) == (t0, t0 + 20)
    with engine.connect() as conn:
        energy = conn.execute(select(schema.usage_shares.c.energy_j)).scalars().all()
    engine.dispose()
    assert sum(energy) == pytest.approx(100.0 * 20)  # the meter's 100 W over the window


def test_hook_infermeter_recorders(tmp_path: Path) -> None:
    """``record`` asks infermeter_recorders once and samples each recorder until it ends."""

    class Recorders:
        def __init__(self) -> None:
            self.samples = 0
            self.closed = False
            self.name = "mine"
            self.period_s = 0.05

        def sample(self, now: float, targets: Mapping[int, Target]) -> None:
            self.samples += 1

        def close(self) -> None:
            self.closed = True

        @hookimpl
        def infermeter_recorders(self, out_dir: Path, config: Config) -> Sequence[Any]:
            return [self]

    pm = make_plugin_manager(blocked=("core.nvml", "core.rapl", "core.cpu_estimate"))
    plugin = Recorders()
    pm.register(plugin, name="mine")
    config = build_config(pm.config_options(), {}, environ={})
    record(tmp_path / "trace", 0.5, config, pm)
    assert plugin.samples >= 2 and plugin.closed


def test_hook_infermeter_recommend_and_infermeter_apply(tmp_path: Path) -> None:
    """infermeter_recommend receives the statistics of the window; infermeter_apply
    (first result wins) carries out what its plugin knows and leaves the rest alone."""
    from infermeter.recommend.run import run as run_recommenders

    seen: list[Stats] = []
    advice = Recommendation(
        kind="mine-restart",
        subject_kind="host",
        subject="h",
        evidence={"why": "test"},
        savings=Savings(usd=0.0, usd_low=0.0, usd_high=0.0, kwh=0.0, kgco2e=0.0),
        confidence="low",
        confidence_reason="a test",
        how_to_apply="restart it",
    )

    class Advice:
        @hookimpl
        def infermeter_recommend(self, stats: Stats, config: Config) -> Sequence[Recommendation]:
            seen.append(stats)
            return []

        @hookimpl
        def infermeter_apply(
            self, recommendation: Recommendation, config: Config, dry_run: bool
        ) -> str | None:
            if recommendation.kind != "mine-restart":
                return None
            return "would restart" if dry_run else "restarted"

    engine = open_engine(f"sqlite:///{tmp_path / 'store.db'}")
    migrate.upgrade(engine)
    pm = make_plugin_manager()
    pm.register(Advice(), name="mine")
    config = build_config(pm.config_options(), {"agent": {"host": "h"}}, environ={})
    run_recommenders(engine, "h", config, pm, None, until=time.time(), now=time.time())
    engine.dispose()
    (got,) = seen
    assert isinstance(got, Stats) and got.host == "h"
    call = pm.hook.infermeter_apply
    assert call(recommendation=advice, config=config, dry_run=True) == "would restart"
    assert call(recommendation=advice, config=config, dry_run=False) == "restarted"
    # Advice no plugin carries out: nobody answers, the change is the operator's.
    other = replace(advice, kind="batch")
    assert call(recommendation=other, config=config, dry_run=True) is None
    # The built-in power-cap plugin answers for its own kind (a dry run touches nothing).
    cap = replace(
        advice, kind="power-cap", evidence={"device_uid": "GPU-1", "suggested_limit_w": 300}
    )
    said = call(recommendation=cap, config=config, dry_run=True)
    assert said is not None and said.startswith("would set the power limit of GPU GPU-1 to 300 W")


def test_hook_infermeter_instrument() -> None:
    """``infermeter.instrument()`` asks every plugin's infermeter_instrument to patch what it
    knows; the built-in runtimes' plugins are among those asked (a real subprocess, so the
    process-wide emitter of this one is not touched)."""
    import subprocess
    import sys

    code = (
        "import json, infermeter.spans.sdk as sdk\n"
        "from infermeter.plugin_manager import make_plugin_manager\n"
        "pm = make_plugin_manager()\n"
        "impls = [i.plugin_name for i in pm.hook.infermeter_instrument.get_hookimpls()]\n"
        "import onnxruntime\n"
        "patched = sdk._run_plugins(sdk.instrument(plugins=False))\n"
        "print(json.dumps([sorted(impls), patched]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    import json

    impls, patched = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"core.torch", "core.onnxruntime", "core.litert"} <= set(impls)
    assert "core.onnxruntime" in patched  # imported above, so patched
    assert set(patched) <= set(impls)
