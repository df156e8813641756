"""Continuous batching on this machine: a tiny PyTorch decoder serving concurrent
requests in shared engine steps, metered by step spans into a running agent.

The client (a real subprocess, CPU PyTorch, random weights) builds a tiny
decoder (embedding, a GRU layer, a vocabulary head) and serves requests of
different prompt and output lengths, arriving at different times, each in
its own thread inside ``infermeter.request(...)``. One engine thread runs
the steps: every step is one forward pass over every request in flight,
reported as one ``infermeter.step`` with a part per request (its prompt's
tokens as prefill on its first step, which also yields its first output
token; 1 decode token on each later step). A request learns how many tokens
it generated only at the end and sets ``req.tokens_out`` then. The client
writes what it did (every step's parts, every request's lengths) to a JSON
file: that is the truth the store is checked against.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from support.agent_run import RunningAgent

pytestmark = pytest.mark.slow

MODEL = "tiny-gru"

CLIENT = r"""
import json, queue, sys, threading, time
import torch
import infermeter

torch.manual_seed(0)
torch.set_num_threads(1)
VOCAB, DIM = 512, 192
nn = torch.nn


class TinyDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, DIM)
        self.gru = nn.GRU(DIM, DIM, batch_first=True)
        self.head = nn.Linear(DIM, VOCAB)

    def forward(self, tokens, lengths, h0):
        x = nn.utils.rnn.pack_padded_sequence(
            self.emb(tokens), lengths, batch_first=True, enforce_sorted=False)
        _, h = self.gru(x, h0)
        return self.head(h[0]), h


model = TinyDecoder().eval()
infermeter.instrument(plugins=False)  # only our step spans, no per-call spans

# (request id, tenant, prompt length, output length, step it arrives at)
REQUESTS = [
    ("r0", "acme", 12, 40, 0), ("r1", "globex", 30, 25, 0), ("r2", "acme", 5, 60, 3),
    ("r3", "initech", 48, 10, 8), ("r4", "globex", 20, 35, 15), ("r5", "acme", 64, 20, 22),
    ("r6", "initech", 8, 50, 30), ("r7", "globex", 16, 30, 41),
]
inbox = queue.Queue()
log = {"steps": [], "requests": {}}
clients = []


class Live:
    def __init__(self, rid, tenant, prompt_len, out_len):
        self.rid, self.tenant, self.out_len = rid, tenant, out_len
        self.prompt = torch.randint(0, VOCAB, (prompt_len,))
        self.h = torch.zeros(1, 1, DIM)
        self.generated = []
        self.done = threading.Event()


def client(rid, tenant, prompt_len, out_len):
    with infermeter.request(model=MODEL_NAME, tenant=tenant, request_id=rid,
                            tokens_in=prompt_len) as req:
        live = Live(rid, tenant, prompt_len, out_len)
        inbox.put(live)
        live.done.wait()
        req.tokens_out = len(live.generated)  # known only now


def engine(arrivals):
    live, step_no = [], 0
    while arrivals or live or not inbox.empty():
        while not inbox.empty():
            live.append(inbox.get())
        while arrivals and arrivals[0][4] <= step_no:
            clients.append(threading.Thread(target=client, args=arrivals.pop(0)[:4]))
            clients[-1].start()
            while inbox.qsize() == 0:  # its thread hands it over before the step
                time.sleep(0.0005)
            live.append(inbox.get())
        if not live:
            step_no += 1
            continue
        seqs, parts = [], []
        for r in live:
            if r.generated:
                seqs.append(torch.tensor([r.generated[-1]]))
                parts.append((r.rid, r.tenant, 0, 1))
            else:
                seqs.append(r.prompt)
                parts.append((r.rid, r.tenant, len(r.prompt), 0))
        lengths = torch.tensor([len(s) for s in seqs])
        tokens = nn.utils.rnn.pad_sequence(seqs, batch_first=True)
        h0 = torch.cat([r.h for r in live], dim=1)
        with infermeter.step(model=MODEL_NAME) as step:
            for rid, tenant, prefill, decode in parts:
                step.add(rid, tenant=tenant, prefill=prefill, decode=decode)
            with torch.no_grad():
                for _ in range(8):  # a few passes: a step long enough to meter
                    logits, h = model(tokens, lengths, h0)
        log["steps"].append(parts)
        nxt = logits.argmax(dim=-1).tolist()
        for i, r in enumerate(live):
            r.h = h[:, i : i + 1]
            r.generated.append(nxt[i])
        for r in [r for r in live if len(r.generated) >= r.out_len]:
            live.remove(r)
            log["requests"][r.rid] = [r.tenant, len(r.prompt), len(r.generated)]
            r.done.set()
        step_no += 1


MODEL_NAME = sys.argv[1]
time.sleep(2.5)  # like a server, loaded before its first request: discovery sees it
engine(list(REQUESTS))
for c in clients:  # every request has set its tokens and left
    c.join()
with open(sys.argv[2], "w") as f:
    json.dump(log, f)
print("done", flush=True)
time.sleep(3)  # a server lives on: the agent attributes its last intervals
"""


def test_step_spans_split_energy_by_tokens_and_final_tokens_reach_the_store(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    sock = tmp_path / "run" / "spans.sock"
    sock.parent.mkdir()
    env = {**cli_env, "INFERMETER_SOCKET": str(sock)}
    config = tmp_path / "agent.toml"
    config.write_text(
        "[agent]\ntick_s = 0.25\nflush_s = 0.5\nspan_lag_s = 0.5\n"
        '[plugins]\ndisabled = ["synthetic"]\n'
    )
    db = tmp_path / "store.db"
    truth_file = tmp_path / "truth.json"
    with RunningAgent(env, config, f"sqlite:///{db}", tmp_path / "agent.log") as agent:
        agent.wait_for(sock.exists, "the span socket")
        client = subprocess.run(
            [sys.executable, "-c", CLIENT, MODEL, str(truth_file)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert client.returncode == 0, client.stderr
        assert "done" in client.stdout
        time.sleep(1.0)  # the last datagrams reach the agent before it stops
        code = agent.stop()
        assert code == 0, agent.text()

    truth = json.loads(truth_file.read_text())
    steps: list[list[list[object]]] = truth["steps"]
    requests: dict[str, list[object]] = truth["requests"]
    assert len(requests) == 8 and len(steps) > 50
    assert max(len(s) for s in steps) >= 4  # requests really shared steps

    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT r.t0, r.t1, r.seq, r.request_id, r.tenant, r.items, r.tokens_in, "
            "r.tokens_out, r.energy_j, t.id FROM requests r "
            "JOIN models m ON m.id = r.model_id JOIN targets t ON t.id = r.target_id "
            "WHERE m.name = ? ORDER BY r.t0, r.seq",
            (MODEL,),
        ).fetchall()
        (active_j,) = conn.execute(
            "SELECT SUM(energy_j) FROM usage_shares WHERE bucket = 'active' AND target_id = ?",
            (rows[0][9],),
        ).fetchone()
        token_view = {
            tenant: (t_in, t_out)
            for tenant, t_in, t_out in conn.execute(
                "SELECT tenant, SUM(tokens_in), SUM(tokens_out) FROM v_token_cost "
                "WHERE model = ? GROUP BY tenant",
                (MODEL,),
            )
        }

    # The final counts: one zero-length, zero-energy span per request, carrying
    # what the request set after generation (each step's own parts carry at
    # most 1 decode token, so a largest tokens_out above 1 came from it).
    finals = [r for r in rows if r[5] == 0]
    assert {r[3]: (r[4], r[6], r[7]) for r in finals} == {
        rid: (tenant, prompt, out) for rid, (tenant, prompt, out) in requests.items()
    }
    assert all(r[0] == r[1] and r[8] == 0.0 for r in finals)
    want_tokens: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for tenant, prompt, out in requests.values():
        want_tokens[str(tenant)][0] += int(prompt)  # type: ignore[call-overload]
        want_tokens[str(tenant)][1] += int(out)  # type: ignore[call-overload]
    assert token_view == {k: tuple(v) for k, v in want_tokens.items()}

    # Every step, in order, as one row per part: the requests the client put in it.
    by_step: dict[tuple[float, float], list[tuple[object, ...]]] = defaultdict(list)
    for r in rows:
        if r[5] != 0:
            by_step[(r[0], r[1])].append(r)
    stored = [by_step[k] for k in sorted(by_step)]
    assert len(stored) == len(steps)
    for parts, got in zip(steps, stored, strict=True):
        assert [(r[3], r[4], r[6], r[7]) for r in got] == [tuple(p) for p in parts]

    # Energy. The agent credits each step span its energy E_s like any call,
    # then splits it over the parts by the learned energy model: part i weighs
    # w_i = p * prefill_i + d * decode_i, with p and d the joules per prefill and
    # decode token of the step's class (summed over the device kinds it was
    # learned on), or w_i = prefill_i + decode_i while no per-token coefficient
    # is learned. The fit moves from flush to flush, so what holds for any such
    # weights is checked exactly: parts doing the same tokens in a step get the
    # same energy, a part with prefill tokens gets at least a decode-only one's,
    # the requests add up to the steps. Then, against the model as stored at
    # the end, each request's energy is the sum of E_s * w_i / W_s within 15%.
    with sqlite3.connect(db) as conn:
        coefficients = conn.execute(
            "SELECT sum(j_per_prefill_token), sum(j_per_decode_token) FROM call_energy_models "
            "WHERE model = ? AND windows >= 5",
            (MODEL,),
        ).fetchone()
    per_prefill, per_decode = (float(c or 0.0) for c in coefficients)
    print(f"learned: {per_prefill:.3g} J per prefill token, {per_decode:.3g} J per decode token")
    per_request: dict[str, float] = defaultdict(float)
    want_request: dict[str, float] = defaultdict(float)
    total_steps_j = 0.0
    for parts, got in zip(steps, stored, strict=True):
        step_j = sum(float(r[8]) for r in got)  # type: ignore[arg-type]
        total_steps_j += step_j
        tokens = [(int(p[2]), int(p[3])) for p in parts]  # type: ignore[call-overload]
        if per_prefill > 0 or per_decode > 0:
            weights = [per_prefill * a + per_decode * b for a, b in tokens]
        else:
            weights = [float(a + b) for a, b in tokens]
        by_tokens: dict[tuple[int, int], float] = {}
        decode_only = [float(r[8]) for r, (a, _) in zip(got, tokens, strict=True) if a == 0]
        for r, w, t in zip(got, weights, tokens, strict=True):
            energy = float(r[8])  # type: ignore[arg-type]
            assert energy == pytest.approx(by_tokens.setdefault(t, energy), rel=1e-9, abs=1e-12)
            if t[0] > 0 and decode_only:
                assert energy >= max(decode_only) * (1 - 1e-9)
            per_request[str(r[3])] += energy
            if sum(weights) > 0:
                want_request[str(r[3])] += step_j * w / sum(weights)
    assert total_steps_j > 0, "the steps drew no energy: nothing was checked"
    assert sum(1 for got in stored if sum(float(r[8]) for r in got) > 0) > len(stored) / 2  # type: ignore[arg-type]
    for rid, energy in per_request.items():
        assert energy == pytest.approx(want_request[rid], rel=0.15), rid
    assert sum(per_request.values()) == pytest.approx(total_steps_j, rel=1e-12)
    assert total_steps_j <= active_j * (1 + 1e-9)
    print(
        f"{len(steps)} steps, {len(requests)} requests: steps {total_steps_j:.4f} J of the "
        f"process's {active_j:.4f} J active; J per request "
        + ", ".join(f"{rid}={per_request[rid]:.4f}" for rid in sorted(per_request))
    )
