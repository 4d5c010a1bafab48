"""`make bench`: does fine-tuning starve inference? Predict throughput with the fine-tune
worker idle, then while it trains a long job, in one run on one server."""
from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from loadtests.common import predict_load, publish
from loadtests.data import rotten_tomatoes

BEGIN, END = "<!-- bench_training:begin -->", "<!-- bench_training:end -->"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from service.settings import Settings
    from tests.integration.server import Server

    reviews = rotten_tomatoes(3000)
    texts = [t for t, _ in reviews]
    examples = [{"text": t, "label": label} for t, label in reviews[:600]]
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Settings().home, Path(tmp) / "server.log", GRAFT_DATABASE_URL=f"sqlite:///{tmp}/r.db",
                        GRAFT_RATE_LIMIT_RPS="0", GRAFT_TRAIN_WORKERS="1",
                        GRAFT_JOB_LEASE_S="3").start()
        try:
            c = server.client()
            c.post("/v1/tenants", json={"tenant": "bench"})
            c.post("/v1/adapters", json={"tenant": "bench", "labels": ["fresh", "rotten"]})
            idle, idle_p50, e1 = asyncio.run(predict_load(server.url, texts, lambda r: "bench", args.seconds))
            job = c.post("/v1/finetune", json={"tenant": "bench", "adapter": "tuned", "examples": examples,
                                               "params": {"method": "head", "epochs": 1000, "patience": 1000}}).json()
            while c.get(f"/v1/jobs/{job['job_id']}").json()["progress"] < 0.25:  # into the epochs
                time.sleep(0.2)
            busy, busy_p50, e2 = asyncio.run(predict_load(server.url, texts, lambda r: "bench", args.seconds))
            state = c.get(f"/v1/jobs/{job['job_id']}").json()
            c.post(f"/v1/jobs/{job['job_id']}/cancel")
        finally:
            server.stop()
    assert state["status"] == "running", f"the job was not training during the measurement: {state['status']}"
    table = "\n".join([
        f"8 clients, 16 texts per request, {args.seconds:.0f} s per run; the job trains a linear head on 600 "
        "embedded reviews (1 worker process, 1 thread, nice 10).",
        "",
        "| fine-tune worker | texts/s | p50 (ms) | failed requests | × idle |",
        "|---|---:|---:|---:|---:|",
        f"| idle | {idle:.1f} | {idle_p50:.0f} | {e1} | 1.00 |",
        f"| training (progress {state['progress']:.2f} at the end) | {busy:.1f} | {busy_p50:.0f} | {e2} | {busy / idle:.2f} |",
    ])
    publish(table, args.out, BEGIN, END)


if __name__ == "__main__":
    main()
