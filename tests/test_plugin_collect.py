"""PluginManager.collect and call_each: each implementation on its own, a failure isolated, a slow
one named.

Each test registers small plugin objects on a fresh manager (no entry
points) and calls ``infermeter_replay_check`` through ``collect``, as the
replay does. No test bounds how long anything takes: a "slow" plugin sleeps
past a threshold of 0 s, a "fast" one runs under a threshold of 1e9 s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from infermeter import hookimpl
from infermeter.plugin_manager import PluginManager, call_each, make_plugin_manager
from infermeter.sidecar.trace_check import TraceProblem

HOOK = "infermeter_replay_check"
LOGGER = "infermeter.plugin_manager"


class Finds:
    """Reports one problem in the trace it is asked about."""

    def __init__(self, what: str, sleep_s: float = 0.0) -> None:
        self.what = what
        self.sleep_s = sleep_s
        self.calls = 0

    @hookimpl
    def infermeter_replay_check(self, trace_dir: Path) -> Sequence[TraceProblem]:
        self.calls += 1
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return [TraceProblem(trace_dir / "f", 1, self.what)]


class Breaks:
    @hookimpl
    def infermeter_replay_check(self, trace_dir: Path) -> Sequence[TraceProblem]:
        raise RuntimeError("a plugin's bug")


class Wraps:
    """A wrapper implementation: pluggy runs it around the call, collect does not."""

    def __init__(self) -> None:
        self.wrapped = 0

    @hookimpl(wrapper=True)
    def infermeter_replay_check(self, trace_dir: Path) -> Iterator[None]:
        self.wrapped += 1
        result = yield
        return result


@pytest.fixture
def pm() -> Iterator[PluginManager]:
    manager = make_plugin_manager(load=False)
    yield manager
    for name, plugin in list(manager.list_name_plugin()):
        if plugin is not None:
            manager.unregister(plugin, name)


def problems(pm: PluginManager, tmp_path: Path) -> list[str]:
    return [p.what for p in pm.collect(HOOK, trace_dir=tmp_path)]


def slow_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "longer than expected" in r.getMessage()]


def test_a_slow_plugin_is_named_in_a_warning_and_counted(
    pm: PluginManager, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pm.register(Finds("slow", sleep_s=0.001), name="sleepy")
    pm.slow_call_s = 0.0
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert problems(pm, tmp_path) == ["slow"]  # a slow result still comes back
    (warning,) = slow_warnings(caplog)
    message = warning.getMessage()
    assert warning.levelno == logging.WARNING
    assert "sleepy" in message and HOOK in message and "slow_call_s 0 s" in message
    assert pm.slow_calls == {("sleepy", HOOK): 1}


def test_a_fast_plugin_gives_no_warning(
    pm: PluginManager, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pm.register(Finds("fast"), name="quick")
    pm.slow_call_s = 1e9
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert problems(pm, tmp_path) == ["fast"]
    assert slow_warnings(caplog) == [] and not pm.slow_calls


def test_a_failing_plugin_is_isolated_from_the_others(
    pm: PluginManager, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, last = Finds("first"), Finds("last")
    pm.register(first, name="first")
    pm.register(Breaks(), name="broken")
    pm.register(last, name="last")
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        assert problems(pm, tmp_path) == ["last", "first"]  # the last registered first, as pluggy
    (failure,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "broken" in failure.getMessage() and HOOK in failure.getMessage()
    assert failure.exc_info is not None and "a plugin's bug" in str(failure.exc_info[1])
    assert first.calls == last.calls == 1


def test_a_plugin_slow_every_call_is_logged_once_and_counted_each_time(
    pm: PluginManager, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pm.register(Finds("slow", sleep_s=0.001), name="sleepy")
    pm.slow_call_s = 0.0
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        problems(pm, tmp_path)
        problems(pm, tmp_path)
    assert len(slow_warnings(caplog)) == 1
    assert pm.slow_calls[("sleepy", HOOK)] == 2


def test_a_slow_failing_plugin_is_counted_too(pm: PluginManager, tmp_path: Path) -> None:
    class SlowBreaks:
        @hookimpl
        def infermeter_replay_check(self, trace_dir: Path) -> Any:
            time.sleep(0.001)
            raise RuntimeError("slow and broken")

    pm.register(SlowBreaks(), name="slow-broken")
    pm.slow_call_s = 0.0
    assert problems(pm, tmp_path) == []
    assert pm.slow_calls == {("slow-broken", HOOK): 1}


def test_collect_does_not_run_wrappers_and_pluggy_does(pm: PluginManager, tmp_path: Path) -> None:
    wrapper = Wraps()
    pm.register(Finds("found"), name="finds")
    pm.register(wrapper, name="wraps")
    assert problems(pm, tmp_path) == ["found"]
    assert wrapper.wrapped == 0  # the documented choice: collect calls providers only
    through_pluggy = pm.hook.infermeter_replay_check(trace_dir=tmp_path)
    assert wrapper.wrapped == 1 and [p.what for batch in through_pluggy for p in batch] == ["found"]


def test_call_each_hands_back_each_result_or_error_in_pluggys_order(
    pm: PluginManager, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The loop collect and the SDK share: a failure is handed back, never raised or logged."""
    wrapper = Wraps()
    pm.register(Finds("first"), name="first")
    pm.register(Breaks(), name="broken")
    pm.register(wrapper, name="wraps")
    pm.register(Finds("last"), name="last")
    with caplog.at_level(logging.DEBUG):
        calls = list(call_each(pm.hook.infermeter_replay_check, {"trace_dir": tmp_path}))
    assert [c.plugin for c in calls] == ["last", "broken", "first"]  # no wrapper among them
    assert wrapper.wrapped == 0
    last, broken, first = calls
    assert [p.what for p in last.result] == ["last"] and last.error is None
    assert broken.result is None and isinstance(broken.error, RuntimeError)
    assert [p.what for p in first.result] == ["first"] and first.error is None
    assert all(c.seconds >= 0 for c in calls)
    assert caplog.records == [], "what a failure is worth saying is the caller's"
