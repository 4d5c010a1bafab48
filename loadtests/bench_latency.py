"""`make bench`: does a lone request wait for company? The micro-batcher's wait
(GRAFT_BATCH_MAX_WAIT_MS) against none, on one server run each: the p50 of one text per
request from one sequential client, and texts/s with 32 clients sending one text and 8
clients sending 16 (batches still form from the requests that queue while a pass runs)."""
from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from loadtests.common import http_load, publish
from loadtests.data import rotten_tomatoes

BEGIN, END = "<!-- bench_latency:begin -->", "<!-- bench_latency:end -->"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from models.int8 import cpu_features
    from service.settings import Settings
    from tests.integration.server import ADMIN_KEY, Server, bearer

    texts = [t for t, _ in rotten_tomatoes(2000)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for wait in ("2", "0"):
            server = Server(Settings().home.resolve(), Path(tmp) / f"server-{wait}.log",
                            GRAFT_DATABASE_URL=f"sqlite:///{tmp}/registry-{wait}.db", GRAFT_RATE_LIMIT_RPS="0",
                            GRAFT_TRAIN_WORKERS="0", GRAFT_BATCH_MAX_WAIT_MS=wait).start()
            try:
                latencies = []
                with httpx.Client(base_url=server.url, headers=bearer(ADMIN_KEY)) as c:
                    for i in range(330):
                        started = time.perf_counter()
                        c.post("/v1/embed", json={"inputs": [texts[i]]}).raise_for_status()
                        if i >= 30:  # warm-up
                            latencies.append(time.perf_counter() - started)
                one = asyncio.run(http_load(server.url, "/v1/embed", lambda rng, n: {"inputs": [texts[n % 2000]]}, 1,
                                            args.seconds, clients=32))
                sixteen = asyncio.run(http_load(
                    server.url, "/v1/embed", lambda rng, n: {"inputs": texts[(n * 16) % 1900 : (n * 16) % 1900 + 16]},
                    16, args.seconds, clients=8))
            finally:
                server.stop()
            rows.append((wait, statistics.median(latencies) * 1000, one, sixteen))
            print(rows[-1], flush=True)
    cpu = cpu_features()
    lines = [f"CPU: {cpu.machine}, flags {' '.join(cpu.flags)}; text backbone as served (int8 where the gate "
             f"allows); {args.seconds:.0f} s per load; one run.", "",
             "| GRAFT_BATCH_MAX_WAIT_MS | lone text p50 (ms) | 32 clients × 1 text: texts/s | "
             "8 clients × 16 texts: texts/s | failed |", "|---:|---:|---:|---:|---:|"]
    for wait, p50, one, sixteen in rows:
        lines.append(f"| {wait} | {p50:.1f} | {one[0]:.0f} | {sixteen[0]:.0f} | {one[2] + sixteen[2]} |")
    publish("\n".join(lines), args.out, BEGIN, END)


if __name__ == "__main__":
    main()
