"""The machinery the instrumentation plugins share: import hooks, caches, hashes."""

from __future__ import annotations

import gc
import hashlib
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from infermeter.plugins.instrument import _base as base


@pytest.fixture
def fake_runtime(tmp_path: Path) -> Iterator[str]:
    """A real package on sys.path, imported by the test (a stand-in for torch)."""
    name = f"im_fake_runtime_{tmp_path.name.replace('-', '_')}"
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text("from .core import Model\nLOADED = True\n")
    (package / "core.py").write_text("class Model:\n    def run(self):\n        return 42\n")
    sys.path.insert(0, str(tmp_path))
    try:
        yield name
    finally:
        sys.path.remove(str(tmp_path))
        for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[mod]


def test_callback_runs_after_the_watched_module_finished_importing(fake_runtime: str) -> None:
    seen: list[types.ModuleType] = []

    def callback(module: types.ModuleType) -> None:
        assert module.LOADED  # the whole __init__ ran
        seen.append(module)

    try:
        assert base.when_imported(fake_runtime, callback) is True
        assert seen == [] and fake_runtime in base.watched()
        module = __import__(fake_runtime)
        assert seen == [module] and fake_runtime not in base.watched()
        assert type(module.__loader__).__name__ == "SourceFileLoader"  # the real loader stays
        assert module.__spec__.loader is module.__loader__
        assert module.Model().run() == 42
    finally:
        base.cancel_when_imported(callback)


def test_submodule_hook_and_already_imported(fake_runtime: str) -> None:
    seen: list[str] = []

    def callback(module: types.ModuleType) -> None:
        seen.append(module.__name__)

    try:
        base.when_imported(f"{fake_runtime}.core", callback)
        __import__(fake_runtime)
        assert seen == [f"{fake_runtime}.core"]
        base.when_imported(fake_runtime, callback)  # already imported: called at once
        assert seen == [f"{fake_runtime}.core", fake_runtime]
    finally:
        base.cancel_when_imported(callback)


def test_modules_that_are_not_installed_are_not_watched() -> None:
    def callback(module: types.ModuleType) -> None:
        raise AssertionError("never imported")

    assert base.when_imported("im_no_such_runtime_anywhere", callback) is False
    assert base.when_imported("im_no_such_runtime_anywhere.sub", callback) is False
    assert "im_no_such_runtime_anywhere" not in base.watched()


def test_a_failing_callback_does_not_break_the_import(fake_runtime: str) -> None:
    def callback(module: types.ModuleType) -> None:
        raise RuntimeError("plugin bug")

    try:
        base.when_imported(fake_runtime, callback)
        module = __import__(fake_runtime)
        assert module.LOADED
    finally:
        base.cancel_when_imported(callback)
    assert all(type(f).__name__ != "_PostImportFinder" for f in sys.meta_path)


def test_weak_id_cache_forgets_dead_objects() -> None:
    class Thing:
        pass

    cache: base.WeakIdCache[str] = base.WeakIdCache()
    a, b = Thing(), Thing()
    cache.set(a, "a")
    cache.set(b, "b")
    assert (cache.get(a), cache.get(b), len(cache)) == ("a", "b", 2)
    del a
    gc.collect()
    assert len(cache) == 1 and cache.get(b) == "b"
    cache.pop(b)
    assert cache.get(b) is None and len(cache) == 0


def test_short_hash_samples_only_large_models() -> None:
    small = b"x" * 1000
    assert base.short_hash(small) == hashlib.sha256(small).hexdigest()[:8]
    big = bytearray(20 << 20)
    one = base.short_hash(big, sample_over=1 << 20)
    big[10 << 20] = 1  # the middle is not sampled
    assert base.short_hash(big, sample_over=1 << 20) == one
    big[-1] = 1  # the tail is
    assert base.short_hash(big, sample_over=1 << 20) != one


def test_leading_dim() -> None:
    assert base.leading_dim(np.zeros((7, 3))) == 7
    assert base.leading_dim(np.float32(1.0)) == 1  # 0-d
    assert base.leading_dim([1, 2, 3]) == 1  # no shape
    assert base.leading_dim(np.zeros((0, 3))) == 1

    class Callable:
        def shape(self) -> list[int]:
            return [5, 2]

    assert base.leading_dim(Callable()) == 5
