"""A damaged trace is refused whole, or, with --partial, replayed with its gaps shown.

Every test damages a copy of a real recording (tests/fixtures/h100-*) the way
a disk, an editor or a crashed recorder would: a garbage value, a truncated
last line, a missing column, NaN or infinity, a time going backwards. The
checks run through the real plugin manager (``infermeter_replay_check`` of
the nvml and cpu_estimate plugins, the core's own files), the replays
through the real CLI into real SQLite files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from support import FIXTURES, run_cli

from infermeter.config import build_config
from infermeter.plugin_manager import make_plugin_manager
from infermeter.sidecar.replay import check_trace, replay
from infermeter.sidecar.trace_check import TraceError
from infermeter.store import migrate
from infermeter.store.engine import open_engine
from infermeter.store.writer import Store

SERVING = FIXTURES / "h100-serving"
ENCODER = FIXTURES / "h100-resnet-encoder"


def lines_of(path: Path) -> list[str]:
    return path.read_text().split("\n")[:-1]  # the files end with a newline


def write_lines(path: Path, lines: list[str], newline_at_end: bool = True) -> None:
    path.write_text("\n".join(lines) + ("\n" if newline_at_end else ""))


def edit_line(path: Path, number: int, change: Callable[[str], str]) -> None:
    """Replace line ``number`` (1-based) by change(line)."""
    lines = lines_of(path)
    lines[number - 1] = change(lines[number - 1])
    write_lines(path, lines)


def edit_cell(path: Path, number: int, column: int, value: str) -> None:
    def change(line: str) -> str:
        cells = line.split(",")
        cells[column] = value
        return ",".join(cells)

    edit_line(path, number, change)


def truncate(path: Path, chars: int = 20) -> int:
    """Cut the file mid-line, as a recorder killed while writing leaves it; the line cut."""
    lines = lines_of(path)
    lines[-1] = lines[-1][:-chars]
    write_lines(path, lines, newline_at_end=False)
    return len(lines)


def set_json(path: Path, number: int, key: str, raw: str) -> None:
    """Set ``key`` on a JSON line to the raw JSON text ``raw`` (which may be NaN)."""

    def change(line: str) -> str:
        d = json.loads(line)
        d[key] = "@@"
        return json.dumps(d).replace('"@@"', raw)

    edit_line(path, number, change)


# Each damage: (fixture, what it does to the copy -> (file, line), what the line says).
Damage = Callable[[Path], tuple[str, int]]


def device_cell(number: int, column: int, value: str) -> Damage:
    """Cell ``column`` of line ``number`` of the device CSV set to ``value``."""

    def damage(d: Path) -> tuple[str, int]:
        edit_cell(d / "nvml_device0.csv", number, column, value)
        return "nvml_device0.csv", number

    return damage


def device_truncated(d: Path) -> tuple[str, int]:
    return "nvml_device0.csv", truncate(d / "nvml_device0.csv")


def device_missing_column(d: Path) -> tuple[str, int]:
    path = d / "nvml_device0.csv"
    write_lines(path, [line.rsplit(",", 1)[0] for line in lines_of(path)])  # no sm_mhz
    return "nvml_device0.csv", 1


def device_missing_cell(d: Path) -> tuple[str, int]:
    edit_line(d / "nvml_device0.csv", 200, lambda line: line.rsplit(",", 1)[0])
    return "nvml_device0.csv", 200


def device_backwards(d: Path) -> tuple[str, int]:
    path = d / "nvml_device0.csv"
    earlier = lines_of(path)[389].split(",")[0]  # line 390's time
    edit_cell(path, 400, 0, earlier)
    return "nvml_device0.csv", 400


def device_far_ahead(d: Path) -> tuple[str, int]:
    path = d / "nvml_device0.csv"
    edit_cell(path, 500, 0, str(float(lines_of(path)[499].split(",")[0]) + 1e6))
    return "nvml_device0.csv", 500


def processes_garbage(d: Path) -> tuple[str, int]:
    edit_line(d / "nvml_processes.jsonl", 50, lambda line: line[:1] + "#" + line[1:])
    return "nvml_processes.jsonl", 50


def processes_nan(d: Path) -> tuple[str, int]:
    set_json(d / "nvml_processes.jsonl", 51, "t", "NaN")
    return "nvml_processes.jsonl", 51


def processes_truncated(d: Path) -> tuple[str, int]:
    return "nvml_processes.jsonl", truncate(d / "nvml_processes.jsonl")


def processes_backwards(d: Path) -> tuple[str, int]:
    path = d / "nvml_processes.jsonl"
    set_json(path, 60, "t", repr(json.loads(lines_of(path)[10])["t"]))
    return "nvml_processes.jsonl", 60


def devices_garbage(d: Path) -> tuple[str, int]:
    path = d / "nvml_devices.json"
    path.write_text(path.read_text().replace("700000", '"lots"'))
    line = next(i for i, x in enumerate(lines_of(path), 1) if "power_limit_mw" in x)
    return "nvml_devices.json", line


def devices_truncated(d: Path) -> tuple[str, int]:
    return "nvml_devices.json", truncate(d / "nvml_devices.json", 5)


def cpu_garbage(d: Path) -> tuple[str, int]:
    edit_line(d / "cpu_times.jsonl", 100, lambda line: line.replace('"system"', '"sys', 1))
    return "cpu_times.jsonl", 100


def cpu_nan(d: Path) -> tuple[str, int]:
    edit_line(
        d / "cpu_times.jsonl", 101, lambda line: line.replace('"user": ', '"user": NaN, "x": ', 1)
    )
    return "cpu_times.jsonl", 101


def cpu_truncated(d: Path) -> tuple[str, int]:
    return "cpu_times.jsonl", truncate(d / "cpu_times.jsonl")


def cpu_backwards(d: Path) -> tuple[str, int]:
    path = d / "cpu_times.jsonl"
    set_json(path, 150, "t", repr(json.loads(lines_of(path)[140])["t"]))
    return "cpu_times.jsonl", 150


def cpu_negative(d: Path) -> tuple[str, int]:
    def change(line: str) -> str:
        row = json.loads(line)
        row["system"]["idle"] = -1.0
        return json.dumps(row)

    edit_line(d / "cpu_times.jsonl", 160, change)
    return "cpu_times.jsonl", 160


def cpu_not_utf8(d: Path) -> tuple[str, int]:
    path = d / "cpu_times.jsonl"
    data = path.read_bytes().split(b"\n")
    data[4] = data[4][:10] + b"\xff\xfe" + data[4][12:]
    path.write_bytes(b"\n".join(data))
    return "cpu_times.jsonl", 5


def spans_garbage(d: Path) -> tuple[str, int]:
    edit_line(d / "spans_A.jsonl", 10, lambda line: line.replace(",", " ", 1))
    return "spans_A.jsonl", 10


def spans_end_before_start(d: Path) -> tuple[str, int]:
    def change(line: str) -> str:
        i, due, start, end, items = json.loads(line)
        return json.dumps([i, due, end, start, items])

    edit_line(d / "spans_A.jsonl", 11, change)
    return "spans_A.jsonl", 11


def spans_infinity(d: Path) -> tuple[str, int]:
    edit_line(d / "spans_A.jsonl", 12, lambda line: line.rsplit(",", 1)[0] + ", Infinity]")
    return "spans_A.jsonl", 12


def spans_truncated(d: Path) -> tuple[str, int]:
    return "spans_A.jsonl", truncate(d / "spans_A.jsonl", 5)


def spans_header(d: Path) -> tuple[str, int]:
    edit_line(d / "spans_A.jsonl", 1, lambda line: line.replace('"pid": 416', '"pid": "A"'))
    return "spans_A.jsonl", 1


def meta_truncated(d: Path) -> tuple[str, int]:
    return "meta.json", truncate(d / "meta.json", 3)


def meta_host(d: Path) -> tuple[str, int]:
    path = d / "meta.json"
    path.write_text(json.dumps({"host": 42, **json.loads(path.read_text())}, indent=1))
    return "meta.json", 2


def workload_nan(d: Path) -> tuple[str, int]:
    path = d / "workload.json"
    lines = lines_of(path)
    line = next(i for i, x in enumerate(lines, 1) if '"lat_p50_ms": 5.' in x)
    lines[line - 1] = '  "lat_p50_ms": NaN,'
    write_lines(path, lines)
    return "workload.json", line


def workload_backwards(d: Path) -> tuple[str, int]:
    path = d / "workload.json"
    phases = json.loads(path.read_text())
    phases[3]["t1"] = phases[3]["t0"] - 1.0
    path.write_text(json.dumps(phases, indent=1) + "\n")
    line = [i for i, x in enumerate(lines_of(path), 1) if '"t1"' in x][3]
    return "workload.json", line


def api_garbage(d: Path) -> tuple[str, int]:
    path = d / "nvml_api.json"
    api = json.loads(path.read_text())
    api["api"]["nvmlDeviceGetPowerManagementLimit"]["value"] = "700000 mW"
    path.write_text(json.dumps(api, indent=1) + "\n")
    line = next(
        i for i, x in enumerate(lines_of(path), 1) if "nvmlDeviceGetPowerManagementLimit" in x
    )
    return "nvml_api.json", line


def recorded_processes(d: Path) -> tuple[str, int]:
    good = {"pid": 416, "start_time": 1795760343.5, "framework": "torch", "cmdline": ["python"]}
    (d / "processes.jsonl").write_text(
        json.dumps(good) + "\n" + json.dumps({**good, "framework": "tensorflow"}) + "\n"
    )
    return "processes.jsonl", 2


DAMAGES: dict[str, tuple[Path, Damage, str]] = {
    "device-garbage": (SERVING, device_cell(100, 2, "12x45"), "power_mw: '12x45' is not a number"),
    "device-truncated": (SERVING, device_truncated, "truncated last line (expected 7 cells"),
    "device-missing-column": (SERVING, device_missing_column, "(missing column sm_mhz)"),
    "device-missing-cell": (SERVING, device_missing_cell, "expected 7 cells, found 6"),
    "device-nan": (
        SERVING,
        device_cell(300, 3, "nan"),
        "power_instant_mw: 'nan' is not a finite number",
    ),
    "device-inf": (SERVING, device_cell(301, 2, "inf"), "power_mw: 'inf' is not a finite number"),
    "device-negative": (SERVING, device_cell(302, 3, "-5"), "power_instant_mw: '-5' is below 0"),
    "device-utilisation": (SERVING, device_cell(303, 4, "250"), "util_gpu: '250' is above 100"),
    "device-backwards": (SERVING, device_backwards, "time goes backwards"),
    "device-far-ahead": (SERVING, device_far_ahead, "time jumps ahead"),
    "device-first-row-far-back": (
        SERVING,
        device_cell(2, 0, "5.0"),  # 1970: a replay of 56 years
        # the nearest good row is the fixture's second, at 1795760343.4066691
        "time 5.0 is 1795760338 s away from the rest of the file",
    ),
    "processes-garbage": (SERVING, processes_garbage, "not JSON"),
    "processes-nan": (SERVING, processes_nan, "NaN is not a number"),
    "processes-truncated": (SERVING, processes_truncated, "truncated last line (not JSON"),
    "processes-backwards": (SERVING, processes_backwards, "time goes backwards"),
    "devices-garbage": (SERVING, devices_garbage, "power_limit_mw: 'lots' is not a number"),
    "devices-truncated": (SERVING, devices_truncated, "truncated"),
    "cpu-garbage": (SERVING, cpu_garbage, "not JSON"),
    "cpu-nan": (SERVING, cpu_nan, "NaN is not a number"),
    "cpu-truncated": (SERVING, cpu_truncated, "truncated last line (not JSON"),
    "cpu-backwards": (SERVING, cpu_backwards, "time goes backwards"),
    "cpu-negative": (SERVING, cpu_negative, "system.idle: -1.0 is below 0"),
    "cpu-not-utf8": (SERVING, cpu_not_utf8, "not UTF-8 text"),
    "spans-garbage": (SERVING, spans_garbage, "not JSON"),
    "spans-end-before-start": (SERVING, spans_end_before_start, "time goes backwards (end"),
    "spans-infinity": (SERVING, spans_infinity, "Infinity is not a number"),
    "spans-truncated": (SERVING, spans_truncated, "truncated last line"),
    "spans-header": (SERVING, spans_header, "header pid: 'A' is not a number"),
    "meta-truncated": (SERVING, meta_truncated, "truncated"),
    "meta-host": (SERVING, meta_host, "host: 42 is not a non-empty string"),
    "workload-nan": (ENCODER, workload_nan, "NaN is not a number"),
    "workload-backwards": (ENCODER, workload_backwards, "phase 3: t1: time goes backwards"),
    "api-garbage": (ENCODER, api_garbage, "value '700000 mW' is not a int"),
    "recorded-processes": (SERVING, recorded_processes, "'tensorflow' is not one infermeter"),
}


def damaged(tmp_path: Path, name: str) -> tuple[Path, Path, int, str]:
    """A damaged copy of the fixture: (trace folder, damaged file, line, expected words)."""
    fixture, damage, words = DAMAGES[name]
    trace = tmp_path / fixture.name
    shutil.copytree(fixture, trace)
    file, line = damage(trace)
    return trace, trace / file, line, words


@pytest.mark.parametrize("fixture", [SERVING, ENCODER], ids=["serving", "encoder"])
def test_the_recordings_check_out_whole(fixture: Path) -> None:
    assert check_trace(fixture, make_plugin_manager()) == []


@pytest.mark.parametrize("name", sorted(DAMAGES))
def test_each_damage_is_one_problem_naming_file_and_line(tmp_path: Path, name: str) -> None:
    trace, path, line, words = damaged(tmp_path, name)
    problems = check_trace(trace, make_plugin_manager())
    # one damaged line is one problem: the rest of the file still reads (a time
    # far ahead or one going back does not make every later line a problem)
    assert len(problems) == 1, [str(p) for p in problems]
    (problem,) = problems
    assert (problem.path, problem.line) == (path, line)
    assert str(problem).startswith(f"{path}:{line}: ") and words in problem.what


def test_a_gap_knows_the_recorded_time_it_leaves_out(tmp_path: Path) -> None:
    trace, path, line, _ = damaged(tmp_path, "device-garbage")
    (problem,) = check_trace(trace, make_plugin_manager())
    rows = lines_of(path)
    # the good rows on either side of the damaged line
    assert problem.t_from == float(rows[line - 2].split(",")[0])
    assert problem.t_to == float(rows[line].split(",")[0])
    trace, path, line, _ = damaged(tmp_path / "t", "cpu-truncated")
    (problem,) = check_trace(trace, make_plugin_manager())
    assert problem.t_from == json.loads(lines_of(path)[line - 2])["t"] and problem.t_to is None
    assert problem.missing.endswith("(to the end of the file)")


def test_the_replay_hook_reports_only_its_own_files(tmp_path: Path) -> None:
    from infermeter.plugins import nvml
    from infermeter.plugins.cpu import estimate as cpu_estimate

    trace, path, line, _ = damaged(tmp_path, "device-garbage")
    (gpu,) = nvml.infermeter_replay_check(trace)
    assert (gpu.path, gpu.line) == (path, line)
    assert cpu_estimate.infermeter_replay_check(trace) == []


def sqlite_state(db: Path) -> tuple[str, dict[str, int]]:
    """The file's bytes (hashed) and every table's row count."""
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        counts = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    conn.close()
    return hashlib.sha256(db.read_bytes()).hexdigest(), counts


def replay_cli(env: dict[str, str], db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(env, "--db", f"sqlite:///{db}", "replay", "--no-progress", *args)


def test_the_library_refuses_before_writing(tmp_path: Path) -> None:
    trace, path, line, words = damaged(tmp_path, "cpu-truncated")
    pm = make_plugin_manager()
    config = build_config(pm.config_options(), None, environ={})
    db = tmp_path / "lib.db"
    engine = open_engine(f"sqlite:///{db}")
    migrate.upgrade(engine)
    engine.dispose()
    before = sqlite_state(db)
    store = Store(open_engine(f"sqlite:///{db}"), "h100-serving")
    with pytest.raises(TraceError) as e:
        replay(trace, config, pm, store)
    store.close()
    assert e.value.problem.line == line and str(e.value).startswith(f"{path}:{line}: ")
    assert words in str(e.value)
    assert sqlite_state(db) == before


REFUSED = ["device-garbage", "device-truncated", "cpu-truncated", "spans-end-before-start"]


def test_replay_cli_refuses_a_damaged_trace_and_leaves_the_store(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    db = tmp_path / "store.db"
    clean = tmp_path / "clean" / SERVING.name
    shutil.copytree(SERVING, clean)
    first = replay_cli(cli_env, db, str(clean))
    assert first.returncode == 0, first.stderr
    before = sqlite_state(db)
    assert before[1]["usage_shares"] > 0
    for name in REFUSED:
        # the same host (the folder's name): a refused replay must not touch its rows
        trace, path, line, words = damaged(tmp_path / name, name)
        r = replay_cli(cli_env, db, str(trace))
        assert r.returncode == 2, (name, r.stderr)
        # one line, no traceback, no log lines: the file, the line and what is wrong
        (said,) = r.stderr.strip().splitlines()
        assert said.startswith(f"infermeter: error: {path}:{line}: ") and words in said, said
        assert r.stdout == ""
        assert sqlite_state(db) == before, name
    fresh = tmp_path / "fresh.db"
    trace, *_ = damaged(tmp_path / "fresh", "device-garbage")
    assert replay_cli(cli_env, fresh, str(trace)).returncode == 2
    assert not fresh.exists()  # refused before the store was even opened


def gpu_energy(db: Path, host: str) -> float:
    with sqlite3.connect(db) as conn:
        (energy,) = conn.execute(
            "SELECT coalesce(sum(s.energy_j), 0) FROM usage_shares s "
            "JOIN devices d ON d.id = s.device_id JOIN hosts h ON h.id = d.host_id "
            "WHERE d.kind = 'gpu' AND h.name = ?",
            (host,),
        ).fetchone()
    conn.close()
    return float(energy)


def quarantined(db: Path) -> list[tuple[str, str, str, float]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT h.name, q.source, q.payload, q.at FROM quarantine q "
            "JOIN hosts h ON h.id = q.host_id ORDER BY q.id"
        ).fetchall()
    conn.close()
    return rows


def test_partial_replays_the_readable_rows_and_shows_each_gap(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    trace, device_path, device_line, _ = damaged(tmp_path, "device-garbage")
    cpu_line = cpu_truncated(trace)[1]
    cpu_path = trace / "cpu_times.jsonl"
    problems = {(p.path, p.line): p for p in check_trace(trace, make_plugin_manager())}
    assert set(problems) == {(device_path, device_line), (cpu_path, cpu_line)}
    db = tmp_path / "partial.db"
    r = replay_cli(cli_env, db, "--partial", str(trace))
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    gaps = [x for x in out if x.startswith("gap: ")]
    # each gap on its own line, with the recorded time it leaves out
    assert gaps == [f"gap: {p}; missing {p.missing}" for p in sorted(problems.values(), key=str)]
    assert f"{problems[(device_path, device_line)].t_from:.3f} to " in gaps[1]
    assert out[-1].endswith(", 2 gap(s) left out (--partial)")
    # the gaps are kept with the host, source 'trace', the file, line and times
    rows = quarantined(db)
    assert [(h, s) for h, s, _, _ in rows] == [(SERVING.name, "trace")] * 2
    payloads = {(json.loads(p)["file"], json.loads(p)["line"]): json.loads(p) for *_, p, _ in rows}
    assert set(payloads) == {(str(device_path), device_line), (str(cpu_path), cpu_line)}
    assert payloads[(str(device_path), device_line)]["t_to"] == (
        problems[(device_path, device_line)].t_to
    )
    # the GPU's energy is still the counter's: one unreadable 20 Hz row is not
    # a counter reading the replay misses (the counter spans it)
    filled = [x.split(",") for x in lines_of(device_path)[1:] if x.split(",")[1]]
    readable = [c for c in filled if c[2] != "12x45"]
    expected = (int(readable[-1][1]) - int(readable[0][1])) / 1000.0
    assert gpu_energy(db, SERVING.name) == pytest.approx(expected, abs=1e-3)
    # a second partial replay of the same trace keeps the gaps once
    again = replay_cli(cli_env, db, "--partial", str(trace))
    assert again.returncode == 0, again.stderr
    assert len(quarantined(db)) == 2 and again.stdout.count("gap: ") == 2


def test_partial_without_a_readable_gpu_file_replays_the_cpu_and_says_so(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    trace, path, _line, _ = damaged(tmp_path, "device-missing-column")
    db = tmp_path / "cpu-only.db"
    r = replay_cli(cli_env, db, "--partial", str(trace))
    assert r.returncode == 0, r.stderr
    assert f"gap: {path}:1: " in r.stdout and "missing the whole file" in r.stdout
    assert "meters cpu_estimate," in r.stdout
    assert gpu_energy(db, SERVING.name) == 0.0
    [(host, source, payload, _at)] = quarantined(db)
    assert (host, source) == (SERVING.name, "trace")
    assert json.loads(payload)["whole_file"] is True


def test_a_garbage_value_is_shown_escaped_and_short(tmp_path: Path) -> None:
    """A terminal escape in a cell must not reach the terminal, nor a megabyte of it."""
    trace = tmp_path / SERVING.name
    shutil.copytree(SERVING, trace)
    edit_cell(trace / "nvml_device0.csv", 100, 2, "\x1b[2J" + "9" * 100_000)
    (problem,) = check_trace(trace, make_plugin_manager())
    said = str(problem)
    assert "\x1b" not in said and "\\x1b[2J" in said
    assert len(problem.what) < 100 and said.count("\n") == 0
