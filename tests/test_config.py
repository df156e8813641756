from __future__ import annotations

import ast
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import ROOT, run_cli

from infermeter.config import CORE_OPTIONS, Option, above, at_least, build_config, load_config
from infermeter.errors import ConfigError
from infermeter.plugin_manager import make_plugin_manager


def test_defaults_and_sources() -> None:
    cfg = build_config(CORE_OPTIONS, environ={})
    assert cfg["agent.tick_s"] == 1.0
    assert cfg["agent.flush_s"] == 10.0
    assert cfg.sources["agent.tick_s"] == "default"
    assert cfg.store_url.startswith("sqlite:///") and cfg.store_url.endswith("infermeter.db")


def test_file_env_and_option_precedence(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[agent]\ntick_s = 2\nhost = "edge-1"\n[store]\nurl = "sqlite:///from-file.db"\n'
    )
    env = {"INFERMETER_DB": "sqlite:///from-env.db"}
    cfg = load_config(CORE_OPTIONS, str(path), environ=env)
    assert cfg["agent.tick_s"] == 2.0 and isinstance(cfg["agent.tick_s"], float)
    assert cfg.sources["agent.tick_s"] == f"file {path}"
    assert cfg.host == "edge-1"
    assert cfg.store_url == "sqlite:///from-env.db"
    assert cfg.sources["store.url"] == "$INFERMETER_DB"
    cfg = load_config(
        CORE_OPTIONS, str(path), environ=env, overrides={"store.url": "sqlite:///from-flag.db"}
    )
    assert cfg.store_url == "sqlite:///from-flag.db"
    assert cfg.sources["store.url"] == "--db"


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "env.toml"
    path.write_text("[agent]\nflush_s = 30\n")
    cfg = load_config(CORE_OPTIONS, None, environ={"INFERMETER_CONFIG": str(path)})
    assert cfg["agent.flush_s"] == 30.0
    assert cfg.path == path


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[agent]\ntik_s = 1\n", "unknown config key `agent.tik_s`"),
        ("[nosuch]\nx = 1\n", "unknown config key `nosuch.x`"),
        ('[agent]\ntick_s = "fast"\n', "config key `agent.tick_s`"),
        ("[agent]\ntick_s = true\n", "must be float, not bool"),
        ("[agent]\ntick_s = 0\n", "must be > 0"),
        ("[agent]\ntick_s = 5\nflush_s = 2\n", "`agent.flush_s` must be >= `agent.tick_s`"),
        ('[agent]\nlog_level = "loud"\n', "agent.log_level"),
        ("agent = 3\n", "must be a [section] table"),
        ("[agent\ntick_s = 1\n", "is not valid TOML"),
    ],
)
def test_bad_config_names_the_problem(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as e:
        load_config(CORE_OPTIONS, str(path), environ={})
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_plugin_options_are_declared_and_typed() -> None:
    opts = [*CORE_OPTIONS, Option("gpu", "poll_s", 0.2, "poll")]
    cfg = build_config(opts, {"gpu": {"poll_s": 1}}, environ={})
    assert cfg.section("gpu") == {"poll_s": 1.0}
    with pytest.raises(ConfigError, match=r"gpu\.poll_s"):
        build_config(opts, {"gpu": {"poll_s": [1]}}, environ={})


@pytest.mark.parametrize(
    ("check", "good", "bad", "message"),
    [
        (above(0), [1e-9, 5, 2.5], [0, -1.0], "must be > 0, not "),
        (above(0, 1), [0.5, 1, 1.0], [0.0, 1.5], "must be "),
        (at_least(1), [1, 7], [0, -3], "must be >= 1, not "),
    ],
)
def test_bounds_are_checked_when_the_config_is_read(
    check: Callable[[Any], str | None], good: list[float], bad: list[float], message: str
) -> None:
    opts = [*CORE_OPTIONS, Option("mine", "rate", 1.0, "A rate.", check=check)]
    for value in good:
        assert build_config(opts, {"mine": {"rate": value}}, environ={})["mine.rate"] == value
    for value in bad:
        with pytest.raises(ConfigError) as e:
            build_config(opts, {"mine": {"rate": value}}, environ={})
        assert "`mine.rate`" in str(e.value) and message in str(e.value), value
        assert repr(value) in str(e.value), "the error shows the value it refused"


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(CORE_OPTIONS, str(tmp_path / "nope.toml"), environ={})


def test_cli_bad_config_exits_2_with_one_line(tmp_path: Path, cli_env: dict[str, str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[agent]\ntick_s = 'x'\n")
    db = tmp_path / "store.db"
    r = run_cli(cli_env, "--config", str(path), "--db", f"sqlite:///{db}", "run")
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines == [lines[-1]] and "agent.tick_s" in lines[-1], r.stderr
    assert not db.exists(), "a bad config must write nothing"


def test_cli_config_show_reports_sources(tmp_path: Path, cli_env: dict[str, str]) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[agent]\ntick_s = 0.5\n[synthetic]\npower_w = 250\n")
    env = {**cli_env, "INFERMETER_CONFIG": str(path), "INFERMETER_DB": "sqlite:////tmp/x.db"}
    r = run_cli(env, "config", "show", "--json", check=True)
    out = json.loads(r.stdout)
    assert out["file"] == str(path)
    assert out["values"]["agent.tick_s"] == {"value": 0.5, "source": f"file {path}"}
    assert out["values"]["synthetic.power_w"]["value"] == 250.0
    assert out["values"]["store.url"]["source"] == "$INFERMETER_DB"
    assert out["values"]["agent.flush_s"]["source"] == "default"


def test_example_config_is_valid_and_shows_the_defaults() -> None:
    path = ROOT / "contrib" / "config.example.toml"
    cfg = load_config(CORE_OPTIONS, str(path), environ={})
    defaults = build_config(CORE_OPTIONS, environ={})
    assert cfg.values == defaults.values
    assert set(cfg.values) == {o.name for o in CORE_OPTIONS}, "every core key is in the example"
    assert all(src.startswith("file ") for src in cfg.sources.values())


def _option_reads(tree: ast.AST) -> list[tuple[int, str]]:
    """``config["section.key"]`` / ``self.config["..."]`` subscripts with a literal key."""
    out = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant)):
            continue
        target = node.value
        name = target.id if isinstance(target, ast.Name) else getattr(target, "attr", None)
        if name == "config" and isinstance(node.slice.value, str):
            out.append((node.lineno, node.slice.value))
    return out


def _fallback_reads(tree: ast.AST) -> list[int]:
    """``config.values.get(...)``, ``config.section(...).get(...)``: a read with a default of
    its own, beside the declared one."""
    out = []
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
        ):
            continue
        on = node.func.value
        values = isinstance(on, ast.Attribute) and on.attr == "values"
        section = (
            isinstance(on, ast.Call)
            and isinstance(on.func, ast.Attribute)
            and on.func.attr == "section"
        )
        if values or section:
            out.append(node.lineno)
    return out


def test_every_option_the_code_reads_is_declared_and_read_one_way() -> None:
    """Issue 11: the config fills every declared key, so a read needs no default of its own."""
    declared = {o.name for o in make_plugin_manager().config_options()}
    sources = sorted([*(ROOT / "agent").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")])
    reads, fallbacks = set(), []
    for path in sources:
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(ROOT)
        reads |= {(f"{where}:{line}", key) for line, key in _option_reads(tree)}
        fallbacks += [f"{where}:{line}" for line in _fallback_reads(tree)]
    assert len(reads) > 20, "the scan finds the readers"
    assert {"nvml.process_poll_s", "rapl.root", "cpu.estimate"} <= {k for _, k in reads}
    assert [r for r in sorted(reads) if r[1] not in declared] == []
    assert fallbacks == []
