"""`make bench`: the latency path (issue #17), measured in one run.

- raw ONNX Runtime in this process, the text backbone as served: one text per call (p50
  and texts/s), and 16 texts as one padded call or row by row;
- Graft over HTTP (the concurrent loads from a lean asyncio client, loadtests.common
  lean_http_load: httpx cost more CPU per request than the servers on this shared machine),
  per server layout (one worker with every core to ORT, or one worker per
  core with one ORT thread each): /livez p50 (the HTTP stack's floor), one sequential
  client sending one text (p50, and the service's own per-stage breakdown from
  graft_stage_seconds), 32 clients × 1 text and 8 clients × 16 texts (texts/s);
- the peer, Infinity (its optimum/ONNX Runtime engine, int8), with the same client and data,
  when `make peer-venv` has installed it (loadtests/peers.py);
- the issue's targets, checked on these figures.
"""
from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import httpx

from loadtests.common import lean_http_load, publish
from loadtests.data import rotten_tomatoes

BEGIN, END = "<!-- bench_latency:begin -->", "<!-- bench_latency:end -->"
STAGES = ("parse", "auth", "prepare", "queue", "model", "handoff", "serialise")
LAYOUTS = {  # the first is the default on a 2-core CPU (GRAFT_ORT_LANES 0: auto, 2 lanes)
    "1 worker × 2 ORT threads, 2 lanes": {"GRAFT_WORKERS": "1", "GRAFT_INTRA_OP_THREADS": "0", "GRAFT_ORT_LANES": "0"},
    "1 worker × 2 ORT threads, no lanes": {"GRAFT_WORKERS": "1", "GRAFT_INTRA_OP_THREADS": "0", "GRAFT_ORT_LANES": "1"},
    "2 workers × 1 ORT thread": {"GRAFT_WORKERS": "2", "GRAFT_INTRA_OP_THREADS": "1"},
}


def window(texts: list[str], start: int, n: int) -> list[str]:
    return [texts[(start + k) % len(texts)] for k in range(n)]


def sequential_p50(call: Callable[[int], Any], n: int, warmup: int = 30) -> float:
    """p50 ms of `call(i)` made one after the other."""
    latencies = []
    for i in range(n + warmup):
        started = time.perf_counter()
        call(i)
        if i >= warmup:
            latencies.append(time.perf_counter() - started)
    return statistics.median(latencies) * 1000


def raw_figures(texts: list[str], seconds: float) -> dict[str, float]:
    """The served text backbone called directly: tokeniser + ONNX Runtime, no service."""
    from models import load_backbone
    from service.settings import Settings

    s = Settings()
    backbone = load_backbone("minilm-l6", s.home, precision=s.precision, provider=s.provider, split_layers=0)
    tok, runner = backbone._tokenizer, backbone._runner

    def one(i: int) -> None:
        ids, mask, _ = tok.encode([texts[i % len(texts)]])
        runner.run(ids, mask)

    def rate(call: Callable[[int], None], per_call: int) -> float:
        done, i, started = 0, 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            call(i)
            done, i = done + per_call, i + 1
        return done / (time.perf_counter() - started)

    def padded16(i: int) -> None:
        ids, mask, _ = tok.encode(window(texts, i * 16, 16))
        runner.run(ids, mask)

    def rows16(i: int) -> None:
        for t in window(texts, i * 16, 16):
            ids, mask, _ = tok.encode([t])
            runner.run(ids, mask)

    def lanes16(i: int) -> None:  # row by row, the rows side by side in the backbone's lanes
        backbone.embed(window(texts, i * 16, 16))

    out = {"p50": sequential_p50(one, 1000), "batch1": rate(one, 1), "padded16": rate(padded16, 16),
           "rows16": rate(rows16, 16), "precision": backbone.precision}
    if backbone.lanes is not None:
        out["lanes16"], out["lanes"] = rate(lanes16, 16), len(backbone.lanes)
    print("raw", out, flush=True)
    return out


def stage_means(metrics_text: str) -> dict[str, tuple[float, float]]:
    """(sum s, count) per stage, and for POST /v1/embed as a whole ("request")."""
    found: dict[str, list[float]] = {}
    for line in metrics_text.splitlines():
        m = re.match(r'graft_stage_seconds_(sum|count)\{stage="(\w+)"\} (\S+)', line)
        if not m:
            m = re.match(r'graft_http_request_duration_seconds_(sum|count)\{method="POST",route="/v1/embed"\} (\S+)',
                         line)
            if m:
                m = re.match(r"(\w+) (request) (\S+)", f"{m.group(1)} request {m.group(2)}")
        if m:
            found.setdefault(m.group(2), [0.0, 0.0])[0 if m.group(1) == "sum" else 1] = float(m.group(3))
    return {k: (v[0], v[1]) for k, v in found.items()}


def lone_breakdown(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Mean ms per stage between two scrapes (the lone-text phase only)."""
    out = {}
    for stage, (total, count) in after.items():
        t0, c0 = before.get(stage, (0.0, 0.0))
        if count > c0:
            out[stage] = (total - t0) / (count - c0) * 1000
    return out


def loads(url: str, path: str, body: Callable[[list[str]], dict[str, Any]], texts: list[str], seconds: float,
          headers: dict[str, str] | None = None) -> dict[str, float]:
    """The issue's three loads against one server."""
    with httpx.Client(base_url=url, headers=headers) as c:
        p50 = sequential_p50(lambda i: c.post(path, json=body([texts[i % len(texts)]])).raise_for_status(), 1000)
    one = asyncio.run(lean_http_load(url, path, lambda rng, n: body([texts[n % len(texts)]]), 1, seconds, clients=32,
                                headers=headers))
    sixteen = asyncio.run(lean_http_load(url, path, lambda rng, n: body(window(texts, n * 16, 16)),
                                    16, seconds, clients=8, headers=headers))
    return {"p50": p50, "one": one[0], "sixteen": sixteen[0], "failed": one[2] + sixteen[2]}


def graft_figures(texts: list[str], seconds: float, env: dict[str, str], tmp: Path) -> dict[str, Any]:
    from service.settings import Settings
    from tests.integration.server import ADMIN_KEY, Server, bearer

    tag = str(len(list(tmp.iterdir())))
    server = Server(Settings().home.resolve(), tmp / f"server-{tag}.log",
                    GRAFT_DATABASE_URL=f"sqlite:///{tmp}/registry-{tag}.db", GRAFT_RATE_LIMIT_RPS="0",
                    GRAFT_TRAIN_WORKERS="0", **env).start()
    try:
        with httpx.Client(base_url=server.url, headers=bearer(ADMIN_KEY)) as c:
            livez = sequential_p50(lambda i: c.get("/livez").raise_for_status(), 500)
            before = stage_means(c.get("/metrics").text)
            lone = sequential_p50(lambda i: c.post("/v1/embed", json={"inputs": [texts[i % len(texts)]]})
                                  .raise_for_status(), 1000)
            stages = lone_breakdown(before, stage_means(c.get("/metrics").text))
        rest = loads(server.url, "/v1/embed", lambda batch: {"inputs": batch}, texts, seconds, bearer(ADMIN_KEY))
        # The OpenAI-compatible route (issue #18) under the same 8 × 16 load, in the same run.
        openai = asyncio.run(lean_http_load(
            server.url, "/v1/embeddings", lambda rng, n: {"model": "minilm-l6", "input": window(texts, n * 16, 16)},
            16, seconds, clients=8, headers=bearer(ADMIN_KEY)))
    finally:
        server.stop()
    out = {**rest, "p50": lone, "livez": livez, "stages": stages, "openai": openai[0],
           "failed": rest["failed"] + openai[2]}
    print("graft", env, out, flush=True)
    return out


def infinity_figures(texts: list[str], seconds: float) -> dict[str, dict[str, Any]]:
    """Infinity on the same model folder, fp32 and int8 (optimum's preset for this CPU), when
    `make peer-venv` installed it; its fp32 vectors are checked against Graft's first."""
    from loadtests import peers

    if not peers.available():
        print("Infinity not installed (make peer-venv): no peer column", flush=True)
        return {}
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        for name, int8 in (("Infinity (ORT fp32)", False), ("Infinity (ORT int8)", True)):
            with peers.infinity_server(int8=int8, export_cache=Path(cache)) as url:
                if not int8:
                    peers.check_same_model(url, texts[:16], peers.graft_fp32_reference(), int8=False)
                out[name] = loads(url, "/embeddings", lambda batch: {"model": peers.SERVED_NAME, "input": batch},
                                  texts, seconds, {})
            print(name, out[name], flush=True)
    return out


def table(raw: dict[str, float], graft: dict[str, dict[str, Any]], peers: dict[str, dict[str, Any]],
          seconds: float) -> str:
    from models.int8 import cpu_features

    cpu = cpu_features()
    best_raw = max(raw["batch1"], raw["padded16"], raw["rows16"], raw.get("lanes16", 0))
    columns = {**{f"Graft, {name}": g for name, g in graft.items()}, **peers}
    lines = [
        f"CPU: {cpu.machine}, flags {' '.join(cpu.flags)}; MiniLM-L6 as Graft serves it ({raw['precision']}); "
        f"Rotten Tomatoes sentences; {seconds:.0f} s per load; one run, the clients on the same machine.", "",
        "| load | raw ORT in process | " + " | ".join(columns) + " |",
        "|---|---:|" + "---:|" * len(columns),
    ]

    def row(label: str, raw_cell: str, key: str, fmt: str) -> None:
        cells = [fmt.format(c[key]) if key in c else "" for c in columns.values()]
        lines.append(f"| {label} | {raw_cell} | " + " | ".join(cells) + " |")

    row("/livez p50 (ms)", "", "livez", "{:.2f}")
    row("1 client × 1 text: p50 (ms)", f"{raw['p50']:.2f} (batch 1)", "p50", "{:.2f}")
    row("32 clients × 1 text: texts/s", f"{raw['batch1']:.0f} (batch 1)", "one", "{:.0f}")
    laned = f"; {raw['lanes16']:.0f} row by row in {raw['lanes']} lanes" if "lanes16" in raw else ""
    row("8 clients × 16 texts: texts/s",
        f"{raw['rows16']:.0f} row by row{laned}; {raw['padded16']:.0f} padded batch 16", "sixteen", "{:.0f}")
    row("8 clients × 16 texts on /v1/embeddings (OpenAI): texts/s", "", "openai", "{:.0f}")
    row("failed requests", "", "failed", "{}")
    lines += ["", "Per-stage breakdown of one lone text (mean ms, the service's graft_stage_seconds; `request` "
              "is POST /v1/embed inside the app; the rest of the client's p50 is the HTTP stack outside "
              "the app, the client and the loopback):", "",
              "| stage | " + " | ".join(graft) + " |", "|---|" + "---:|" * len(graft)]
    for stage in (*STAGES, "request"):
        lines.append(f"| {stage} | " + " | ".join(f"{g['stages'].get(stage, 0):.3f}" for g in graft.values()) + " |")
    lines.append("| client p50 | " + " | ".join(f"{g['p50']:.3f}" for g in graft.values()) + " |")
    lines += ["", "Targets (issue #17), per layout:", ""]
    for name, g in graft.items():
        bound = g["livez"] + 1.3 * raw["p50"] + 1
        checks = [f"lone p50 {g['p50']:.2f} ≤ /livez + 1.3 × raw + 1 = {bound:.2f} ms: "
                  f"{'met' if g['p50'] <= bound else 'NOT met'}",
                  f"32×1 at {g['one'] / raw['batch1']:.2f} of raw batch 1 (≥ 0.6): "
                  f"{'met' if g['one'] >= 0.6 * raw['batch1'] else 'NOT met'}",
                  f"8×16 at {g['sixteen'] / best_raw:.2f} of the best raw (≥ 0.9): "
                  f"{'met' if g['sixteen'] >= 0.9 * best_raw else 'NOT met'}"]
        checks.append(f"/v1/embeddings at {g['openai'] / g['sixteen']:.2f} of /v1/embed (≥ 0.95, issue #18): "
                      f"{'met' if g['openai'] >= 0.95 * g['sixteen'] else 'NOT met'}")
        if peers:
            best_one = max(p["one"] for p in peers.values())
            checks.append(f"32×1 at {g['one'] / best_one:.2f}× the better Infinity (≥ 1.5): "
                          f"{'met' if g['one'] >= 1.5 * best_one else 'NOT met'}")
            behind = sorted({f"{load} vs {peer}" for peer, p in peers.items() for load in ("one", "sixteen")
                             if g[load] < p[load]} | {f"p50 vs {peer}" for peer, p in peers.items() if g["p50"] > p["p50"]})
            checks.append("never behind Infinity: " + ("met" if not behind else f"NOT met ({'; '.join(behind)})"))
        lines.append(f"- {name}: " + "; ".join(checks))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--no-peer", action="store_true", help="skip Infinity even when installed")
    args = parser.parse_args()
    texts = [t for t, _ in rotten_tomatoes(2000)]
    raw = raw_figures(texts, args.seconds)
    with tempfile.TemporaryDirectory() as tmp:
        graft = {name: graft_figures(texts, args.seconds, env, Path(tmp)) for name, env in LAYOUTS.items()}
    peers = {} if args.no_peer else infinity_figures(texts, args.seconds)
    publish(table(raw, graft, peers, args.seconds), args.out, BEGIN, END)


if __name__ == "__main__":
    main()
