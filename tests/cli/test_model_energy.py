"""``infermeter model-energy``: the coefficients the splits used, from a real replay."""

from __future__ import annotations

import json
from pathlib import Path

from support import run_cli
from support.replayed import ENCODER, ReplayedStores

from infermeter.attribute.energy_model import fit_from_records
from infermeter.config import build_config
from infermeter.plugin_manager import make_plugin_manager
from infermeter.sidecar.agent import Agent
from infermeter.store.engine import open_engine
from infermeter.store.writer import Store


def test_it_shows_what_one_call_costs_per_model_and_batch(
    template_stores: ReplayedStores, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    url = template_stores.sqlite(tmp_path / "e.db", (ENCODER,))
    r = run_cli(cli_env, "--db", url, "model-energy", "--json")
    assert r.returncode == 0, r.stderr
    rows = {(m["model"], m["dtype"]): m for m in json.loads(r.stdout)["models"]}
    assert {("resnet50", "fp32"), ("encoder", "bf16")} <= set(rows)
    # The recording's own solo phases: a ResNet-50 fp32 batch of 32 cost 5.33 J per
    # call and a batch of 1 0.24 J (counter net of the held-context draw).
    rn = rows[("resnet50", "fp32")]
    assert 4.5 < rn["j_per_call"] + 32 * rn["j_per_item"] < 6.5
    assert 0.15 < rn["j_per_call"] + rn["j_per_item"] < 0.45
    assert rn["r2"] > 0.9 and rn["windows"] >= 5 and rn["device_kind"] == "gpu"
    text = run_cli(cli_env, "--db", url, "model-energy")
    assert text.returncode == 0
    assert "resnet50" in text.stdout and "J @bs8" in text.stdout
    none = run_cli(cli_env, "--db", url, "model-energy", "--host", "elsewhere")
    assert none.returncode == 0 and "no energy model stored yet" in none.stdout


def test_a_restarted_agent_reads_the_stored_model_back(
    template_stores: ReplayedStores, tmp_path: Path
) -> None:
    url = template_stores.sqlite(tmp_path / "e.db", (ENCODER,))
    store = Store(open_engine(url), ENCODER.name)
    records = store.energy_models()
    fit = fit_from_records(records)
    assert fit.windows > 50 and fit.r2 is not None
    # The agent starts from it: its first flush weighs calls as the last run learned.
    pm = make_plugin_manager()
    config = build_config(pm.config_options(), {}, environ={})
    agent = Agent(config, pm, store, meters=[], span_sources=[])
    agent.start()
    assert agent.energy.fit == fit
    assert not agent.energy.learner.learned
    rn = next(c for k, c in fit.coefficients.items() if k.model == "resnet50" and k.dtype == "fp32")
    assert fit.predict(rn.call_class, (1.0, 8.0, 0.0, 0.0)) == rn.j_per_call + 8 * rn.j_per_item
    store.close()


def test_no_store_is_one_line_and_exit_2(tmp_path: Path, cli_env: dict[str, str]) -> None:
    r = run_cli(cli_env, "--db", f"sqlite:///{tmp_path / 'none.db'}", "model-energy")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"infermeter: error: no store at {tmp_path / 'none.db'}"
    ]
