"""`make rehearse`: a local multi-replica rehearsal on loopback.

Two API processes and one trainer process share one PostgreSQL. A tenant fine-tunes through
replica 1 and predicts through replica 2, which must serve the new version within 2 s of
the promotion; then one API process is killed with -9 mid-load and the other keeps serving.
Figures go to stdout and, with --out, into docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from loadtests.common import publish, scratch_database

BEGIN, END = "<!-- rehearsal:begin -->", "<!-- rehearsal:end -->"
ROOT = Path(__file__).resolve().parents[1]
TICKETS = [("I was charged twice", "billing"), ("refund my payment", "billing"), ("wrong amount on my invoice", "billing"),
           ("my parcel is late", "delivery"), ("the courier lost my box", "delivery"), ("where is my package", "delivery"),
           ("the app crashes", "technical"), ("cannot log in", "technical"), ("error 500 on checkout", "technical")]


def rehearse(database_url: str, home: Path, logs: Path, load_seconds: float = 6.0) -> dict[str, float]:
    from tests.integration.server import SIGNING_KEY, Server

    env = dict(GRAFT_DATABASE_URL=database_url, GRAFT_TRAIN_WORKERS="0", GRAFT_RATE_LIMIT_RPS="0")
    replicas = [Server(home, logs / f"api{i}.log", **env) for i in (1, 2)]
    trainer = subprocess.Popen(
        [sys.executable, "-m", "service.worker"], cwd=ROOT,
        env={**os.environ, "GRAFT_HOME": str(home), "GRAFT_DATABASE_URL": database_url, "GRAFT_JOB_POLL_MS": "100",
             "GRAFT_TRAIN_METRICS_PORT": "0", "GRAFT_SIGNING_KEY": SIGNING_KEY},  # one key for every process
        stdout=(logs / "trainer.log").open("wb"), stderr=subprocess.STDOUT,
    )
    try:
        for r in replicas:
            r.start()
        one = replicas[0].client()
        key = one.post("/v1/tenants", json={"tenant": "rehearsal"}).json()["api_key"]
        t1, t2 = replicas[0].client(key), replicas[1].client(key)
        examples = [{"text": t, "label": label} for t, label in TICKETS * 2]
        job = t1.post("/v1/finetune", json={"tenant": "rehearsal", "examples": examples, "params": {"method": "head", "epochs": 30}}).json()
        while (state := t1.get(f"/v1/jobs/{job['job_id']}").json())["status"] in ("queued", "running"):
            time.sleep(0.05)
        assert state["status"] == "succeeded" and state["promoted"], state
        seen_at = time.monotonic()
        while True:
            r = t2.post("/v1/predict", json={"tenant": "rehearsal", "inputs": ["refund please"]})
            if r.status_code == 200 and r.json()["version"] == state["version"]:
                break
            assert time.monotonic() - seen_at < 10, r.text
            time.sleep(0.02)
        propagation = time.monotonic() - seen_at

        counts = {"before": [0, 0], "after_1": [0, 0], "after_2": [0, 0]}  # [ok, failed]
        killed = threading.Event()
        stop = threading.Event()

        def hammer(server, tag: str) -> None:
            with server.client(key, timeout=10) as c:
                while not stop.is_set():
                    try:
                        ok = c.post("/v1/predict", json={"tenant": "rehearsal", "inputs": ["my parcel is late"]}).status_code == 200
                    except Exception:
                        ok = False
                    phase = "before" if not killed.is_set() else f"after_{tag}"
                    counts[phase][0 if ok else 1] += 1
                    if not ok:
                        time.sleep(0.05)

        threads = [threading.Thread(target=hammer, args=(r, tag)) for r, tag in ((replicas[0], "1"), (replicas[1], "2")) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(load_seconds)
        killed.set()
        replicas[0].kill()  # kill -9 of the server process and its workers
        time.sleep(load_seconds)
        stop.set()
        for t in threads:
            t.join()
        assert counts["after_2"][1] == 0 and counts["after_2"][0] > 0, counts
        assert counts["before"][1] == 0, counts
        assert counts["after_1"][0] <= 4, counts  # at most the requests in flight at the kill
        return {
            "propagation_s": propagation,
            "rps_before": counts["before"][0] / load_seconds,
            "rps_after": counts["after_2"][0] / load_seconds,
            "failed_before": counts["before"][1],
            "failed_survivor": counts["after_2"][1],
            "failed_killed": counts["after_1"][1],
            "served_by_killed": counts["after_1"][0],
        }
    finally:
        trainer.terminate()
        trainer.wait(20)
        for r in replicas:
            r.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from service.settings import Settings

    with scratch_database("graft_rehearsal") as url, tempfile.TemporaryDirectory() as logs:
        f = rehearse(url, Settings().home.resolve(), Path(logs))
    table = "\n".join([
        "Two API processes and one trainer process on one PostgreSQL, on loopback; 2 client threads per replica "
        "sending one text per request.", "",
        "| measure | result |", "|---|---|",
        f"| fine-tuned through replica 1, served by replica 2 after the job succeeded | {f['propagation_s']:.2f} s (target < 2 s) |",
        f"| predictions/s, both replicas up | {f['rps_before']:.1f} ({f['failed_before']} failed) |",
        f"| predictions/s on replica 2 after replica 1 was killed with -9 | {f['rps_after']:.1f} ({f['failed_survivor']} failed) |",
        f"| requests to the killed replica after the kill: failed / served (in flight) | {f['failed_killed']} / {f['served_by_killed']} |",
    ])
    publish(table, args.out, BEGIN, END)


if __name__ == "__main__":
    main()
