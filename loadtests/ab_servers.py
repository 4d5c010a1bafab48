"""Two server settings in alternating pairs: a lone text's p50 and 32 clients × 1 text.

    python -m loadtests.ab_servers --pairs 6 --a GRAFT_INLINE_MAX_TOKENS=0 --b GRAFT_INLINE_MAX_TOKENS=64

This host's speed drifts by ±25 % between minutes, more than the latency path's single
changes move a lone text, so one bench run cannot tell two settings apart. Here each pair
starts a server with A's environment and one with B's (the order alternates), sends 800
sequential one-text requests (p50) and then runs 32 clients × 1 text; the medians over the
pairs are compared (docs/BENCHMARKS.md, the latency path). Rotten Tomatoes sentences,
the lean client, the same registry-less server as bench_latency.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

import httpx

from loadtests.bench_latency import sequential_p50
from loadtests.common import lean_http_load
from loadtests.data import rotten_tomatoes


def measure(texts: list[str], env: dict[str, str], tmp: Path, tag: str, seconds: float) -> dict[str, float]:
    from service.settings import Settings
    from tests.integration.server import ADMIN_KEY, Server, bearer

    server = Server(Settings().home.resolve(), tmp / f"server-{tag}.log", GRAFT_DATABASE_URL=f"sqlite:///{tmp}/{tag}.db",
                    GRAFT_RATE_LIMIT_RPS="0", GRAFT_TRAIN_WORKERS="0", **env).start()
    try:
        headers = bearer(ADMIN_KEY)
        with httpx.Client(base_url=server.url, headers=headers) as c:
            livez = sequential_p50(lambda i: c.get("/livez").raise_for_status(), 300)
            lone = sequential_p50(lambda i: c.post("/v1/embed", json={"inputs": [texts[i % len(texts)]]})
                                  .raise_for_status(), 800)
        one = asyncio.run(lean_http_load(server.url, "/v1/embed", lambda rng, n: {"inputs": [texts[n % len(texts)]]},
                                         1, seconds, clients=32, headers=headers))
    finally:
        server.stop()
    return {"p50": lone, "livez": livez, "one": one[0], "failed": one[2]}


def settings(pairs: list[str]) -> dict[str, str]:
    return dict(p.split("=", 1) for p in pairs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=6.0, help="32 × 1 load per server")
    parser.add_argument("--a", nargs="*", default=[], help="KEY=VALUE environment of side A")
    parser.add_argument("--b", nargs="*", default=[], help="KEY=VALUE environment of side B")
    args = parser.parse_args()
    texts = [t for t, _ in rotten_tomatoes(2000)]
    sides = {"A": settings(args.a), "B": settings(args.b)}
    results: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.pairs):
            for side in ("A", "B") if k % 2 == 0 else ("B", "A"):
                r = measure(texts, sides[side], Path(tmp), f"{side}{k}", args.seconds)
                results[side].append(r)
                print(f"pair {k} {side} {sides[side]}: p50 {r['p50']:.2f} ms, livez {r['livez']:.2f} ms, "
                      f"32x1 {r['one']:.0f} texts/s, failed {r['failed']}", flush=True)
    for side in ("A", "B"):
        rs = results[side]
        print(f"median {side} {sides[side]}: p50 {statistics.median(r['p50'] for r in rs):.2f} ms, "
              f"livez {statistics.median(r['livez'] for r in rs):.2f} ms, "
              f"32x1 {statistics.median(r['one'] for r in rs):.0f} texts/s")
    faster = sum(b["p50"] < a["p50"] for a, b in zip(results["A"], results["B"]))
    print(f"B's lone p50 below A's in {faster} of {args.pairs} pairs")


if __name__ == "__main__":
    main()
