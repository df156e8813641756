"""The Instrumentor every instrumentation plugin is one instance of: patch, unpatch, guards."""

from __future__ import annotations

import importlib
import logging
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pluggy
import pytest
from support.span_sink import MemoryEmitter

from infermeter import hookspecs
from infermeter.plugins.instrument import _base as base

PLUGINS = ("torch", "onnxruntime", "litert")


class Toy(base.Instrumentor):
    """A plugin written like the real ones, for a one-class runtime: ``Model.run(x)``."""

    framework = "toy"

    def __init__(self, runtime: str) -> None:
        super().__init__({"__name__": "im_toy_plugin"})
        self.modules = (runtime,)
        self.forgotten: list[tuple[bool, bool]] = []  # (lock held, originals back) per forget()

    def install(self, module: types.ModuleType) -> None:
        namespace = self.namespace

        def make(original: Callable[..., Any]) -> Callable[..., Any]:
            def run(model: Any, x: int) -> Any:
                emitter = namespace["_emitter"]
                result = original(model, x)
                if emitter is not None:
                    emitter.emit_call("toy", 0.0, 1.0, x, base.NO_TAGS, "toy", None, None, None)
                return result

            return run

        self.patches.replace(module.Model, "run", make)

    def forget(self) -> None:
        module = sys.modules.get(self.modules[0])  # None: never imported, nothing to restore
        run = module.Model.__dict__["run"] if module is not None else None
        self.forgotten.append((self.lock.locked(), not hasattr(run, "__infermeter_original__")))


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The name of a module on sys.path that nothing has imported yet."""
    name = f"im_toy_runtime_{tmp_path.name.replace('-', '_')}"
    source = "class Model:\n    def run(self, x):\n        return 2 * x\n"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


@pytest.fixture
def toys() -> Iterator[list[Toy]]:
    """Instrumentors a test made; each is unpatched after it (no import hook left behind)."""
    made: list[Toy] = []
    yield made
    for toy in made:
        toy.unpatch()


def test_patching_twice_wraps_once_and_the_latest_emitter_wins(
    runtime: str, toys: list[Toy]
) -> None:
    module = importlib.import_module(runtime)
    original = module.Model.__dict__["run"]
    toy = Toy(runtime)
    toys.append(toy)
    assert not toy.is_patched()
    em1, em2 = MemoryEmitter(), MemoryEmitter()
    assert toy.patch(em1) is True and toy.patch(em2) is True
    assert toy.is_patched()
    assert module.Model.__dict__["run"].__infermeter_original__ is original
    assert module.Model().run(3) == 6
    assert (em1.take(), [s.items for s in em2.take()]) == ([], [3])
    toy.unpatch()
    assert module.Model.__dict__["run"] is original and not toy.is_patched()
    assert toy.namespace["_emitter"] is None
    toy.unpatch()  # a second unpatch finds nothing to do
    assert module.Model().run(1) == 2 and em2.take() == []


def test_patch_before_import_waits_and_unpatch_cancels_the_wait(
    runtime: str, toys: list[Toy]
) -> None:
    toy = Toy(runtime)
    toys.append(toy)
    em = MemoryEmitter()
    assert toy.patch(em) is True
    assert not toy.is_patched() and runtime in base.watched()
    toy.unpatch()
    assert runtime not in base.watched()
    module = importlib.import_module(runtime)
    assert not toy.is_patched() and not hasattr(module.Model.run, "__infermeter_original__")
    toy.patch(em)  # imported now: patched at once
    module.Model().run(5)
    assert [s.items for s in em.take()] == [5]


def test_the_wait_ends_in_a_patch_at_import(runtime: str, toys: list[Toy]) -> None:
    toy = Toy(runtime)
    toys.append(toy)
    em = MemoryEmitter()
    toy.patch(em)
    module = importlib.import_module(runtime)
    assert toy.is_patched() and runtime not in base.watched()
    assert module.Model().run(4) == 8 and [s.items for s in em.take()] == [4]


def test_a_runtime_that_is_not_installed_is_no_answer(toys: list[Toy]) -> None:
    toy = Toy("im_no_such_runtime_anywhere")
    toys.append(toy)
    assert toy.patch(MemoryEmitter()) is False
    assert toy.instrument(MemoryEmitter()) is None
    assert not toy.is_patched() and "im_no_such_runtime_anywhere" not in base.watched()


def test_a_failing_patch_is_logged_and_never_raised(
    runtime: str, toys: list[Toy], caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(Toy):
        def install(self, module: types.ModuleType) -> None:
            raise RuntimeError("the runtime changed its API")

    importlib.import_module(runtime)
    toy = Broken(runtime)
    toys.append(toy)
    with pytest.raises(RuntimeError):
        toy.patch(MemoryEmitter())  # patch() itself says so; the hook's instrument() must not
    with caplog.at_level(logging.WARNING, logger="im_toy_plugin"):
        assert toy.instrument(MemoryEmitter()) is None
    [record] = [r for r in caplog.records if r.name == "im_toy_plugin"]
    assert record.levelno == logging.WARNING and record.getMessage() == "could not instrument toy"
    assert record.exc_info is not None and "API" in str(record.exc_info[1])
    assert not toy.is_patched()


def test_failures_are_counted_and_only_the_first_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    toy = Toy("im_no_such_runtime_anywhere")
    with caplog.at_level(logging.DEBUG, logger="im_toy_plugin"):
        for i in range(3):
            try:
                raise ValueError(f"emitter broke {i}")
            except ValueError:
                toy.failed()
    assert toy.namespace["errors"] == 3
    [record] = [r for r in caplog.records if r.name == "im_toy_plugin"]
    assert record.getMessage() == "toy instrumentation failed; the call went on"
    assert record.exc_info is not None and str(record.exc_info[1]) == "emitter broke 0"


def test_forget_runs_on_unpatch_under_the_lock_after_the_restore(
    runtime: str, toys: list[Toy]
) -> None:
    importlib.import_module(runtime)
    toy = Toy(runtime)
    toys.append(toy)
    toy.patch(MemoryEmitter())
    assert toy.forgotten == []
    toy.unpatch()
    assert toy.forgotten == [(True, True)]


@pytest.mark.parametrize("name", PLUGINS)
def test_each_plugins_module_functions_are_one_instrumentors(name: str) -> None:
    plugin = importlib.import_module(f"infermeter.plugins.instrument.{name}")
    instrumentor = plugin._instrumentor
    assert isinstance(instrumentor, base.Instrumentor)
    assert instrumentor.namespace is vars(plugin) and instrumentor.framework == plugin.FRAMEWORK
    for function in ("patch", "unpatch", "is_patched", "infermeter_instrument"):
        assert getattr(plugin, function).__self__ is instrumentor
    pm = pluggy.PluginManager("infermeter")
    pm.add_hookspecs(hookspecs)
    pm.register(plugin, name=f"core.{name}")
    [impl] = pm.hook.infermeter_instrument.get_hookimpls()
    assert impl.argnames == ("emitter",) and impl.plugin is plugin  # the hook, without self
    before = plugin.errors
    try:
        raise RuntimeError("swallowed")
    except RuntimeError:
        instrumentor.failed()
    assert plugin.errors == before + 1  # the module's own counter, as the tests read it
