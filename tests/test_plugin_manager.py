from __future__ import annotations

import inspect
import json
import logging
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from support import TESTS, run_cli

from infermeter import hookimpl, hookspecs
from infermeter.config import CORE_OPTIONS, Option, build_config
from infermeter.plugin_manager import make_plugin_manager

HOOK_NAMES = sorted(n for n in dir(hookspecs) if n.startswith("infermeter_"))


def test_every_hook_is_documented_and_tested() -> None:
    tests_text = "\n".join(p.read_text() for p in TESTS.rglob("test_*.py"))
    for name in HOOK_NAMES:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert len(doc) > 80, f"{name} needs a docstring saying when it is called and its units"
        # A hook is tested when some test names it (this test only lists them).
        assert name in tests_text, f"no test exercises {name}"


def test_registered_plugin_is_called_and_unregistered() -> None:
    pm = make_plugin_manager(load=False)
    calls: list[str] = []

    class Plugin:
        @hookimpl
        def infermeter_config_options(self) -> list[Option]:
            calls.append("options")
            return [Option("mine", "level", 3, "a level")]

    plugin = Plugin()
    pm.register(plugin, name="mine")
    try:
        options = pm.config_options()
        assert calls == ["options"]
        assert [o.name for o in options if o.section == "mine"] == ["mine.level"]
        assert len(options) == len(CORE_OPTIONS) + 1
        assert [i.name for i in pm.describe()] == ["mine"]
        assert pm.describe()[0].hooks == ("infermeter_config_options",)
    finally:
        pm.unregister(plugin)
    assert pm.describe() == []


def test_a_failing_plugin_does_not_stop_the_others() -> None:
    pm = make_plugin_manager(load=False)
    cfg = build_config(CORE_OPTIONS, environ={})

    class Broken:
        @hookimpl
        def infermeter_meters(self, config: object) -> list[object]:
            raise RuntimeError("no such device")

    class Good:
        @hookimpl
        def infermeter_meters(self, config: object) -> list[str]:
            return ["meter-a", "meter-b"]

    pm.register(Broken(), name="broken")
    pm.register(Good(), name="good")
    assert pm.collect("infermeter_meters", config=cfg) == ["meter-a", "meter-b"]


def test_broken_entry_point_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    pm = make_plugin_manager(load=False)
    ep = EntryPoint(name="broken", value="infermeter_no_such_module", group="infermeter")
    with caplog.at_level(logging.WARNING):
        pm.load_entry_point(ep)
    assert [f.name for f in pm.failures] == ["broken"]
    assert "ModuleNotFoundError" in pm.failures[0].error
    assert "plugin broken" in caplog.text
    assert pm.get_plugin("broken") is None


def test_builtin_plugins_load_through_entry_points() -> None:
    pm = make_plugin_manager()
    names = {i.name: i for i in pm.describe()}
    for builtin in ("core.procfs", "core.nvml", "core.rapl", "core.cpu_estimate"):
        assert builtin in names, pm.failures
        assert names[builtin].distribution == "infermeter"
        assert names[builtin].module.startswith("infermeter.plugins.")
    assert pm.failures == []


def test_loading_every_plugin_loads_no_store_and_no_driver() -> None:
    """Instrumented applications and every CLI command load all plugins: that must stay light."""
    script = (
        "import sys\n"
        "from infermeter.plugin_manager import make_plugin_manager\n"
        "pm = make_plugin_manager()\n"
        "assert not pm.failures, pm.failures\n"
        "print(len(pm.describe()))\n"
        "heavy = ('sqlalchemy', 'alembic', 'pynvml', 'psutil', 'rich', 'apscheduler')\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    count, loaded = done.stdout.splitlines()
    assert int(count) >= 16
    assert loaded == ""


def test_blocked_plugin_is_not_loaded() -> None:
    pm = make_plugin_manager(blocked=["core.nvml"])
    assert "core.nvml" not in {i.name for i in pm.describe()}
    assert pm.is_blocked("core.nvml")


def test_third_party_plugin_is_listed(cli_env: dict[str, str]) -> None:
    r = run_cli(cli_env, "plugins", "--json", check=True)
    out = json.loads(r.stdout)
    synthetic = [p for p in out["plugins"] if p["name"] == "synthetic"]
    assert synthetic == [
        {
            "name": "synthetic",
            "hooks": [
                "infermeter_apply",
                "infermeter_config_options",
                "infermeter_export",
                "infermeter_meters",
            ],
            "version": "1.2.3",
            "distribution": "infermeter-synthetic",
            "module": "infermeter_synthetic",
        }
    ]
    r = run_cli(cli_env, "plugins", check=True)
    assert "infermeter-synthetic" in r.stdout and "1.2.3" in r.stdout


def test_disabled_in_config_is_not_listed(tmp_path: Path, cli_env: dict[str, str]) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[plugins]\ndisabled = ["synthetic"]\n')
    r = run_cli(cli_env, "--config", str(path), "plugins", "--json", check=True)
    assert "synthetic" not in {p["name"] for p in json.loads(r.stdout)["plugins"]}
