"""RAPL over real files: fake powercap trees in a temporary folder, read by the real code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.waiting import wait_until

from infermeter.attribute.split import Baseline, attribute_reading
from infermeter.config import CORE_OPTIONS, Config, build_config
from infermeter.discover.processes import start_time
from infermeter.hookspecs import Meter
from infermeter.plugins.cpu import estimate as cpu_estimate
from infermeter.plugins.cpu import rapl
from infermeter.plugins.cpu.weights import PsutilTimes
from infermeter.records import Bucket, DeviceKind, Method, Target

INTEL_RANGE = 262_143_328_850  # what Intel servers report, in uJ


def zone(root: Path, entry: str, name: str, energy_uj: int, max_uj: int = INTEL_RANGE) -> Path:
    z = root / entry
    z.mkdir(parents=True)
    (z / "name").write_text(name + "\n")
    (z / "max_energy_range_uj").write_text(f"{max_uj}\n")
    set_energy(z, energy_uj)
    return z


def set_energy(z: Path, energy_uj: int) -> None:
    """Replace the counter atomically, as the poller thread may be reading it."""
    tmp = z / "energy_uj.tmp"
    tmp.write_text(f"{energy_uj}\n")
    os.replace(tmp, z / "energy_uj")


def server_tree(root: Path) -> dict[str, Path]:
    """Two packages with DRAM, plus zones that must not be metered."""
    return {
        "pkg0": zone(root, "intel-rapl:0", "package-0", 1_000_000),
        "core0": zone(root, "intel-rapl:0:0", "core", 500_000),
        "dram0": zone(root, "intel-rapl:0:1", "dram", 2_000_000),
        "pkg1": zone(root, "intel-rapl:1", "package-1", 3_000_000),
        "psys": zone(root, "intel-rapl:2", "psys", 9_000_000),
        "mmio0": zone(root, "intel-rapl-mmio:0", "package-0", 7_000_000),
    }


BURN_THEN_SLEEP = """
import sys, time
print("go", flush=True)
end = time.process_time() + {seconds}
while time.process_time() < end:
    pass
time.sleep(60)
"""


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` straight from /proc, independent of psutil."""
    fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def config(root: Path | str, **sections: dict[str, object]) -> Config:
    options = [
        *CORE_OPTIONS,
        *rapl.infermeter_config_options(),
        *cpu_estimate.infermeter_config_options(),
    ]
    file_values: dict[str, dict[str, object]] = {"rapl": {"root": str(root)}}
    for section, values in sections.items():
        file_values.setdefault(section, {}).update(values)
    return build_config(options, file_values)


@pytest.fixture
def meters() -> Iterator[list[object]]:
    """Meters a test opened; closed afterwards so no poller thread outlives its test."""
    opened: list[object] = []
    yield opened
    for m in opened:
        m.close()  # type: ignore[attr-defined]


def test_scan_finds_packages_and_dram_only(tmp_path: Path) -> None:
    server_tree(tmp_path)
    (tmp_path / "intel-rapl").mkdir()  # the control-type folder itself is not a zone
    found = rapl.scan(tmp_path)
    got = {(d.uid, d.kind, d.package, d.name) for d in found.domains}
    assert got == {
        ("rapl:package-0", DeviceKind.CPU_PACKAGE, 0, "package-0"),
        ("rapl:dram-0", DeviceKind.DRAM, 0, "dram"),
        ("rapl:package-1", DeviceKind.CPU_PACKAGE, 1, "package-1"),
    }
    pkg0 = next(d for d in found.domains if d.uid == "rapl:package-0")
    assert pkg0.path == tmp_path / "intel-rapl:0"  # the MSR zone, not the MMIO duplicate
    assert pkg0.max_range_uj == INTEL_RANGE
    assert found.has_package and not found.denied


def test_amd_and_tpmi_layouts(tmp_path: Path) -> None:
    amd = tmp_path / "amd"
    zone(amd, "intel-rapl:0", "package-0", 10, max_uj=65_712_999_613)
    zone(amd, "intel-rapl:0:0", "core", 5, max_uj=65_712_999_613)
    assert [d.uid for d in rapl.scan(amd).domains] == ["rapl:package-0"]
    tpmi = tmp_path / "tpmi"
    zone(tpmi, "intel-rapl-tpmi:0", "package-0", 10)
    zone(tpmi, "intel-rapl-tpmi:0:1", "dram", 10)
    assert [d.uid for d in rapl.scan(tpmi).domains] == ["rapl:package-0", "rapl:dram-0"]
    assert rapl.scan(tmp_path / "absent").domains == ()


def test_wrap_delta_and_poll_period() -> None:
    assert rapl.wrap_delta(100, 350, 1000) == 250
    assert rapl.wrap_delta(900, 100, 1000) == 200  # wrapped once
    assert rapl.wrap_delta(500, 500, 1000) == 0

    def domain(max_uj: int) -> rapl.Domain:
        return rapl.Domain(
            Path("/x"), "package-0", "rapl:package-0", DeviceKind.CPU_PACKAGE, 0, max_uj
        )

    assert rapl.poll_period_s([domain(INTEL_RANGE)], 1000.0) == pytest.approx(131.07, abs=0.01)
    both = [domain(65_712_999_613), domain(INTEL_RANGE)]
    assert rapl.poll_period_s(both, 1000.0) == pytest.approx(32.86, abs=0.01)


def test_energy_accumulates_and_is_split_by_cpu_seconds(
    tmp_path: Path, meters: list[object]
) -> None:
    z = server_tree(tmp_path)
    [meter] = rapl.infermeter_meters(config(tmp_path))
    meters.append(meter)
    assert isinstance(meter, rapl.RaplMeter) and isinstance(meter, Meter)
    burner = subprocess.Popen(
        [sys.executable, "-c", BURN_THEN_SLEEP.format(seconds=1.0)], stdout=subprocess.PIPE
    )
    try:
        assert burner.stdout is not None
        assert burner.stdout.readline() == b"go\n"
        st = start_time(burner.pid)
        assert st is not None
        targets = {burner.pid: Target("h", burner.pid, st)}
        t0 = time.time()
        cpu0 = cpu_seconds(burner.pid)
        assert meter.read(t0, targets) == []  # baseline
        set_energy(z["pkg0"], 1_000_000 + 5_000_000)
        set_energy(z["dram0"], 2_000_000 + 750_000)
        set_energy(z["pkg1"], 3_000_000 + 2_500_000)
        set_energy(z["mmio0"], 99_000_000)  # not metered: must not show up anywhere
        time.sleep(1.3)
        t1 = time.time()
        readings = {r.device.uid: r for r in meter.read(t1, targets)}
        used = cpu_seconds(burner.pid) - cpu0
    finally:
        burner.kill()
        burner.wait()
    assert {uid: r.energy_j for uid, r in readings.items()} == {
        "rapl:package-0": pytest.approx(5.0),
        "rapl:dram-0": pytest.approx(0.75),
        "rapl:package-1": pytest.approx(2.5),
    }
    pkg = readings["rapl:package-0"]
    assert pkg.method is Method.MEASURED and pkg.weight_basis == "cpu-seconds"
    assert (pkg.t0, pkg.t1) == (t0, t1)
    assert pkg.device.kind is DeviceKind.CPU_PACKAGE
    assert readings["rapl:dram-0"].device.kind is DeviceKind.DRAM
    assert used > 0.5
    assert pkg.weights[burner.pid] == pytest.approx(used, abs=0.03)
    assert pkg.busy_fraction is not None and 0 < pkg.busy_fraction <= 1
    shares = attribute_reading(pkg, targets, Baseline(idle_power_w=1.0))
    assert sum(s.energy_j for s in shares) == pytest.approx(5.0, abs=1e-6)
    assert all(s.method is Method.MEASURED for s in shares)
    active = [s for s in shares if s.bucket is Bucket.ACTIVE]
    assert [s.target for s in active] == [targets[burner.pid].key]
    assert active[0].energy_j > 0


def test_counter_wrap_between_reads(tmp_path: Path, meters: list[object]) -> None:
    z = zone(tmp_path, "intel-rapl:0", "package-0", 900_000, max_uj=1_000_000)
    meter = rapl.RaplMeter(rapl.scan(tmp_path).domains, PsutilTimes())
    meters.append(meter)
    meter.read(time.time(), {})
    set_energy(z, 150_000)  # went past 1,000,000 and wrapped to 0
    [reading] = meter.read(time.time(), {})
    assert reading.energy_j == pytest.approx(0.25)


def test_poller_catches_wraps_that_reads_alone_would_miss(
    tmp_path: Path, meters: list[object]
) -> None:
    """Two wraps between reads: only a poll in between can see both."""
    z = zone(tmp_path, "intel-rapl:0", "package-0", 0, max_uj=1_000_000)
    # 1 J range at up to 25 W wraps every 40 ms: the poller runs every 20 ms.
    meter = rapl.RaplMeter(rapl.scan(tmp_path).domains, PsutilTimes(), max_power_w=25.0)
    meters.append(meter)
    assert meter.poll_s == pytest.approx(0.02)
    meter.read(time.time(), {})

    def wait_polls(n: int) -> None:
        target = meter.polls + n
        wait_until(lambda: meter.polls >= target, f"{n} more polls", poll_s=0.005)

    for value in (600_000, 200_000, 700_000, 100_000):  # 0.6 + 0.6 + 0.5 + 0.4 J
        set_energy(z, value)
        wait_polls(2)
    [reading] = meter.read(time.time(), {})
    assert reading.energy_j == pytest.approx(2.1)
    meter.close()
    assert not meter._thread.is_alive()


def test_domain_that_goes_away_pauses_without_raising(tmp_path: Path, meters: list[object]) -> None:
    z = server_tree(tmp_path)
    [meter] = rapl.infermeter_meters(config(tmp_path))
    meters.append(meter)
    meter.read(time.time(), {})  # type: ignore[attr-defined]
    (z["dram0"] / "energy_uj").unlink()
    set_energy(z["pkg0"], 1_000_000 + 1_000_000)
    readings = meter.read(time.time(), {})  # type: ignore[attr-defined]
    assert [r.device.uid for r in readings] == ["rapl:package-0", "rapl:package-1"]
    assert readings[0].energy_j == pytest.approx(1.0)
    set_energy(z["dram0"], 2_000_000 + 300_000)  # it answers again, from where it left
    readings = meter.read(time.time(), {})  # type: ignore[attr-defined]
    assert {r.device.uid: r.energy_j for r in readings}["rapl:dram-0"] == pytest.approx(0.3)


def test_package_idle_comes_from_the_cpu_table(tmp_path: Path, meters: list[object]) -> None:
    per_thread_idle = rapl.PER_THREAD_W["EPYC 3rd Gen"][0]
    ncpu = os.cpu_count() or 1
    assert rapl.package_idle_w(2, "AMD EPYC 7763 64-Core Processor") == pytest.approx(
        per_thread_idle * ncpu / 2
    )
    assert rapl.package_idle_w(1, "AMD EPYC") is None  # unknown: learned, not guessed
    server_tree(tmp_path)
    [meter] = rapl.infermeter_meters(config(tmp_path, rapl={"idle_w": 42.0}))
    meters.append(meter)
    devices = meter.devices  # type: ignore[attr-defined]
    assert devices["rapl:package-1"].idle_power_w == 42.0
    assert devices["rapl:dram-0"].idle_power_w is None


def test_estimate_stands_aside_only_when_rapl_measures(
    tmp_path: Path, meters: list[object]
) -> None:
    server_tree(tmp_path / "usable")
    (tmp_path / "empty").mkdir()
    dram_only = tmp_path / "dram-only"
    zone(dram_only, "intel-rapl:0:1", "dram", 5)

    def offered(cfg: Config) -> tuple[list[str], list[str]]:
        r = rapl.infermeter_meters(cfg)
        c = cpu_estimate.infermeter_meters(cfg)
        meters.extend([*r, *c])
        return [m.name for m in r], [m.device.uid for m in c]

    assert offered(config(tmp_path / "usable")) == (["rapl"], [])
    assert offered(config(tmp_path / "empty")) == ([], ["cpu"])
    assert offered(config(tmp_path / "absent")) == ([], ["cpu"])
    assert offered(config(dram_only)) == ([], ["cpu"])
    assert offered(config(tmp_path / "usable", cpu={"estimate": "always"})) == (["rapl"], ["cpu"])
    assert offered(config(tmp_path / "empty", cpu={"estimate": "never"})) == ([], [])
    disabled = config(tmp_path / "usable", plugins={"disabled": ["core.rapl"]})
    assert cpu_estimate.infermeter_meters(disabled)[0].device.uid == "cpu"
    without_rapl = build_config([*CORE_OPTIONS, *cpu_estimate.infermeter_config_options()], {})
    assert cpu_estimate.infermeter_meters(without_rapl)[0].device.uid == "cpu"


DENIED_CHILD = """
import json, logging, os, sys
from infermeter.config import CORE_OPTIONS, build_config
from infermeter.plugins.cpu import estimate as cpu_estimate
from infermeter.plugins.cpu import rapl
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="LOG %(levelname)s %(message)s")
root = sys.argv[1]
options = [*CORE_OPTIONS, *rapl.infermeter_config_options(),
           *cpu_estimate.infermeter_config_options()]
cfg = build_config(options, {"rapl": {"root": root}})
if sys.argv[2] == "drop":
    os.setgid(65534)
    os.setuid(65534)
found = rapl.scan(root)
r = rapl.infermeter_meters(cfg)
c = cpu_estimate.infermeter_meters(cfg)
print("RESULT " + json.dumps({"rapl": len(r), "cpu": [m.device.uid for m in c],
                              "denied": [str(p) for p in found.denied]}))
"""


def test_permission_denied_names_the_fix_and_the_estimate_takes_over() -> None:
    """energy_uj readable only by root, read by an unprivileged process: a real EACCES.

    As root, chmod cannot deny a read, so the child drops to nobody after
    importing; run unprivileged, the file is made unreadable to its owner.
    """
    root = Path(tempfile.mkdtemp(prefix="powercap-", dir="/tmp"))
    try:
        root.chmod(0o755)
        server_tree(root)
        for counter in root.glob("*/energy_uj"):
            counter.chmod(0o400 if os.geteuid() == 0 else 0o000)
        mode = "drop" if os.geteuid() == 0 else "stay"
        out = subprocess.run(
            [sys.executable, "-c", DENIED_CHILD, str(root), mode],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        shutil.rmtree(root)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.split("RESULT ", 1)[1])
    assert result["rapl"] == 0
    assert result["cpu"] == ["cpu"]
    assert f"{root}/intel-rapl:0/energy_uj" in result["denied"]
    warnings = [line for line in out.stdout.splitlines() if line.startswith("LOG WARNING")]
    assert len(warnings) == 1
    assert "CVE-2020-8694" in warnings[0]
    assert f"sudo chmod o+r {root}/intel-rapl:*/energy_uj" in warnings[0]
    assert "run the agent as root" in warnings[0]
