"""``infermeter model-energy``: the energy model the agent splits by, as it learned it.

Every split between processes and between calls that names ``energy-model``
weighed them by these coefficients, so a reader of a bill can see what one
call of each model was taken to cost, how many intervals that was learned
from and how well the fit explains them (R²).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import click
from sqlalchemy import Connection, select

from infermeter.cli import App, cli, pass_app
from infermeter.safe_text import printable
from infermeter.store import schema

# The batch sizes the table shows the predicted J per call at.
SHOWN_BATCHES = (1, 8, 32)


@dataclass(frozen=True, slots=True)
class ModelEnergyRow:
    host: str
    model: str
    dtype: str
    device_kind: str
    j_per_call: float
    j_per_item: float
    j_per_prefill_token: float
    j_per_decode_token: float
    windows: int
    r2: float | None
    fit_windows: int
    updated_at: float


def read_model_energy(conn: Connection, host: str | None = None) -> list[ModelEnergyRow]:
    m, h = schema.call_energy_models.c, schema.hosts.c
    q = (
        select(h.name, m.model, m.dtype, m.device_kind, m.j_per_call, m.j_per_item)
        .add_columns(m.j_per_prefill_token, m.j_per_decode_token, m.windows, m.r2)
        .add_columns(m.fit_windows, m.updated_at)
        .join(schema.hosts, schema.hosts.c.id == m.host_id)
        .order_by(h.name, m.model, m.dtype, m.device_kind)
    )
    if host is not None:
        q = q.where(h.name == host)
    return [ModelEnergyRow(*row) for row in conn.execute(q)]


def render(rows: list[ModelEnergyRow]) -> str:
    if not rows:
        return "no energy model stored yet: it is learned from intervals with calls in flight"
    head = ["host", "model", "dtype", "device", "J/call", "J/item", "J/prefill tok", "J/decode tok"]
    head += [f"J @bs{b}" for b in SHOWN_BATCHES] + ["windows", "R2"]
    table = [head]
    for r in rows:
        table.append(
            [
                printable(r.host),
                printable(r.model),
                printable(r.dtype) or "-",
                printable(r.device_kind),
                f"{r.j_per_call:.4g}",
                f"{r.j_per_item:.4g}",
                f"{r.j_per_prefill_token:.4g}",
                f"{r.j_per_decode_token:.4g}",
                *(f"{r.j_per_call + b * r.j_per_item:.4g}" for b in SHOWN_BATCHES),
                str(r.windows),
                "-" if r.r2 is None else f"{r.r2:.3f}",
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table
    ]
    lines.append("")
    lines.append(
        "J(call) = J/call + J/item x batch + J/token x tokens; R2 of each host's whole fit. "
        "Used to split what was measured, never to add to it."
    )
    return "\n".join(lines)


@cli.command("model-energy")
@click.option("--host", default=None, help="Only this host's model.")
@click.option("--json", "json_out", is_flag=True, help="JSON: {models: [...]}.")
@pass_app
def model_energy(app: App, host: str | None, json_out: bool) -> None:
    """The learned energy of one call per model, dtype and device kind, and its fit quality."""
    from infermeter.cli.report import reading

    with reading(app.config.store_url) as conn:
        rows = read_model_energy(conn, host)
    if json_out:
        click.echo(json.dumps({"models": [asdict(r) for r in rows]}, indent=2, sort_keys=True))
    else:
        click.echo(render(rows))
