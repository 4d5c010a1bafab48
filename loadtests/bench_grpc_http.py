"""`make bench`: gRPC vs HTTP predict throughput and latency, measured with locust in one run.

The same server, the same tenants (100, drawn Zipf-like), the same texts per request; first
HTTP users, then gRPC users, each for a fixed time.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from loadtests.common import LOAD_LABELS, load_tenants, publish

BEGIN, END = "<!-- bench_grpc_http:begin -->", "<!-- bench_grpc_http:end -->"
ROOT = Path(__file__).resolve().parents[1]


def run_locust(user: str, server, seconds: int, users: int, out: Path) -> dict[str, float]:
    from tests.integration.server import ADMIN_KEY

    prefix = out / user
    env = {**os.environ, "GRAFT_LOAD_KEY": ADMIN_KEY, "GRAFT_LOAD_GRPC": server.grpc_target, "GRAFT_LOAD_SETUP": "0"}
    subprocess.run(
        [str(Path(sys.executable).with_name("locust")), "-f", str(ROOT / "loadtests/locustfile.py"), "--headless",
         "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--host", server.url, "--csv", str(prefix),
         "--only-summary", "--loglevel", "WARNING", user],
        cwd=ROOT, env=env, check=False, timeout=seconds + 300,
    )
    with open(f"{prefix}_stats.csv") as fh:
        row = next(r for r in csv.DictReader(fh) if r["Name"] == "Aggregated")
    return {"rps": float(row["Requests/s"]), "p50": float(row["50%"]), "p99": float(row["99%"]),
            "requests": float(row["Request Count"]), "failures": float(row["Failure Count"])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from service.settings import Settings
    from tests.integration.server import Server

    texts = int(os.environ.get("GRAFT_LOAD_TEXTS", "16"))
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Settings().home, Path(tmp) / "server.log", GRAFT_DATABASE_URL=f"sqlite:///{tmp}/r.db",
                        GRAFT_RATE_LIMIT_RPS="0", GRAFT_TRAIN_WORKERS="0").start()
        try:
            with server.client() as c:  # the locust users' tenants, created outside the measured runs
                for tenant in load_tenants(100):
                    c.post("/v1/tenants", json={"tenant": tenant})
                    c.post("/v1/adapters", json={"tenant": tenant, "labels": LOAD_LABELS})
            results = {user: run_locust(user, server, args.seconds, args.users, Path(tmp))
                       for user in ("HttpPredictUser", "GrpcPredictUser")}
        finally:
            server.stop()
    http = results["HttpPredictUser"]
    lines = [
        f"locust, {args.users} users per run, {args.seconds} s per run, {texts} texts per request, "
        "100 tenants drawn Zipf-like (s=1.1), load generator on the same 2 cores.",
        "",
        "| transport | requests/s | texts/s | p50 (ms) | p99 (ms) | failures | × HTTP throughput |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in (("HTTP (JSON)", http), ("gRPC (protobuf)", results["GrpcPredictUser"])):
        lines.append(f"| {name} | {r['rps']:.1f} | {r['rps'] * texts:.0f} | {r['p50']:.0f} | {r['p99']:.0f} | "
                     f"{r['failures']:.0f} of {r['requests']:.0f} | {r['rps'] / http['rps']:.2f} |")
    table = "\n".join(lines)
    publish(table, args.out, BEGIN, END)


if __name__ == "__main__":
    main()
