"""``infermeter demo``: a real agent, a real CPU model, the packaged H100 recording.

Run as a newcomer runs it, in a subprocess, for a few seconds of load. The
report must name the CPU model, both tenants and the H100's models, and the
store it leaves (``--keep``) must hold every request the server says it sent.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from support import FIXTURES, run_cli

import infermeter.sidecar.demo

pytestmark = pytest.mark.slow


def test_demo_reports_the_cpu_model_the_tenants_and_the_h100(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    keep = tmp_path / "demo"
    done = run_cli(cli_env, "demo", "--seconds", "5", "--keep", str(keep))
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "Traceback" not in done.stderr
    assert "spans are off" not in done.stderr  # the replay opened no span socket of its own
    for step in ("starting the agent", "serving demo-mlp", "replaying the H100", "recommenders"):
        assert step in done.stderr
    for name in ("demo-mlp", "acme", "globex", "resnet50", "encoder", "mlp", "Cost by tenant"):
        assert name in out, name
    report_lines = [line for line in out.splitlines() if "--db sqlite" not in line]
    assert max(len(line) for line in report_lines) <= 80  # but the command to copy, unwrapped
    assert f"--db sqlite:///{keep / 'store.db'} report" in out
    sent = {t: int(n) for n, t in re.findall(r"(\d+)\s+from\s+(acme|globex)", out)}
    assert set(sent) == {"acme", "globex"} and sent["acme"] > sent["globex"] > 0

    # The kept store: every request sent is stored, with its tenant, and costs something.
    url = f"sqlite:///{keep / 'store.db'}"
    report = run_cli(cli_env, "--db", url, "report", "--from", "0", "--by", "tenant", "--json")
    assert report.returncode == 0, report.stderr
    groups = {g["key"]: g for g in json.loads(report.stdout)["groups"] if g["kind"] == "group"}
    for tenant, n in sent.items():
        assert groups[tenant]["requests"]["requests"] == n
        assert groups[tenant]["costs"]["cost"]["value"] > 0
        assert groups[tenant]["methods"] == {"estimated": 1.0}  # no RAPL here: the estimate
    by_model = run_cli(cli_env, "--db", url, "report", "--from", "0", "--json")
    models = {g["key"]: g for g in json.loads(by_model.stdout)["groups"] if g["kind"] == "group"}
    assert models["demo-mlp"]["requests"]["requests"] == sum(sent.values())
    assert models["resnet50"]["methods"]["measured"] > 0.9  # the H100's energy counter


def test_the_packaged_recording_is_the_fixture() -> None:
    packaged = infermeter.sidecar.demo.TRACE
    fixture = FIXTURES / "h100-serving"
    names = sorted(p.name for p in fixture.iterdir())
    assert sorted(p.name for p in packaged.iterdir()) == names
    for name in names:
        assert (packaged / name).read_bytes() == (fixture / name).read_bytes(), name
