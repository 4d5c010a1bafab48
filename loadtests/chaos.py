"""`make chaos`: faults under load, on loopback, bounded in time.

Two API replicas and one trainer share a PostgreSQL reached through a TCP proxy that can
cut it. Locust (loadtests/locustfile.py: HTTP and gRPC predicts, image embeds, fine-tunes,
every user with its tenant's own key) loads replica A. Meanwhile actors on replica B
submit fine-tunes and race them with promotes, rollbacks and deletes of the same adapter,
and send bad input on purpose. On a schedule the registry is cut and restored, the trainer
is killed with -9 and restarted, and replica B is killed with -9 and restarted.

Afterwards, with the database reached directly: versions lost (a version a job reported
published that is gone, though no delete of its adapter came after: must be 0), jobs stuck
(not ended once the load stopped and leases ran out: must be 0), 5xx answers to bad input
(must be 0), and every request by outcome. Figures to stdout and, with --out, into
docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import csv
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from loadtests.common import publish, scratch_database

BEGIN, END = "<!-- chaos:begin -->", "<!-- chaos:end -->"
ROOT = Path(__file__).resolve().parents[1]
ENDED = ("succeeded", "failed", "cancelled")
TICKETS = [("I was charged twice", "billing"), ("refund my payment", "billing"), ("wrong amount on my invoice", "billing"),
           ("my parcel is late", "delivery"), ("the courier lost my box", "delivery"), ("where is my package", "delivery"),
           ("the app crashes", "technical"), ("cannot log in", "technical"), ("error 500 on checkout", "technical")]


def bad_requests() -> list[tuple[str, str, str, dict[str, Any]]]:
    """(name, method, path, httpx arguments) of requests that are wrong on purpose, in ways
    a replica can tell without its registry (an unknown adapter cannot be told from a
    registry that is away: that answers 503 while it is cut, rightly)."""
    import base64
    import io

    from PIL import Image

    big = io.BytesIO()
    Image.new("1", (5000, 5000)).save(big, "PNG")
    nested = ('{"text": ' + "[" * 100_000 + "]" * 100_000 + ', "label": "x"}\n').encode()
    return [
        ("malformed JSON", "POST", "/v1/embed", {"content": b'{"inputs": [', "headers": {"content-type": "application/json"}}),
        ("wrong type", "POST", "/v1/embed", {"json": {"inputs": [{"nope": 1}]}}),
        ("text too long", "POST", "/v1/embed", {"json": {"inputs": ["x" * 30_000]}}),
        ("too many items", "POST", "/v1/embed", {"json": {"inputs": ["x"] * 300}}),
        ("bad base64 image", "POST", "/v1/embed", {"json": {"backbone": "efficientnet-lite0", "inputs": [{"image": "%%"}]}}),
        ("25-MP PNG", "POST", "/v1/embed", {"json": {"backbone": "efficientnet-lite0",
                                                     "inputs": [{"image": base64.b64encode(big.getvalue()).decode()}]}}),
        ("deeply nested JSONL", "POST", "/v1/finetune", {"data": {"tenant": "chaos-0"}, "files": {"file": ("x.jsonl", nested)}}),
        ("CSV field too long", "POST", "/v1/finetune", {"data": {"tenant": "chaos-0"},
                                                         "files": {"file": ("x.csv", b"text,label\n" + b"y" * 200_000 + b",a\n")}}),
        ("bad name", "GET", "/v1/tenants/NOT..OK/adapters", {}),
        ("unknown route", "GET", "/v1/nothing", {}),
        ("wrong method", "GET", "/v1/embed", {}),
        ("blank bearer", "POST", "/v1/embed", {"json": {"inputs": ["x"]}, "headers": {"authorization": "Bearer \u00a0".encode("latin-1")}}),
    ]


@dataclass
class Ledger:
    """What the actors did and saw (thread-safe)."""

    outcomes: Counter[str] = field(default_factory=Counter)  # "200", "503", "connection", ...
    bad_input: Counter[str] = field(default_factory=Counter)
    bad_input_5xx: list[str] = field(default_factory=list)
    deletes: list[tuple[str, str, float]] = field(default_factory=list)  # tenant, adapter, wall time sent
    lock: threading.Lock = field(default_factory=threading.Lock)

    def saw(self, outcome: str) -> None:
        with self.lock:
            self.outcomes[outcome] += 1


class Actors:
    """Clients of replica B, and of replica A while B is out of rotation (restarting: as a
    load balancer that follows /readyz would route), or when B does not answer."""

    def __init__(self, primary: Any, fallback: Any, keys: dict[str, str], admin_key: str, ledger: Ledger) -> None:
        self.servers, self.keys, self.admin_key, self.ledger = (primary, fallback), keys, admin_key, ledger
        self.stop = threading.Event()
        self.primary_out = threading.Event()
        self.bad = bad_requests()

    def call(self, method: str, path: str, key: str, **kw: Any) -> httpx.Response | None:
        headers = {"authorization": f"Bearer {key}", **kw.pop("headers", {})}
        for server in self.servers[1:] if self.primary_out.is_set() else self.servers:
            try:
                r = httpx.request(method, server.url + path, headers=headers, timeout=30, **kw)
            except httpx.HTTPError:
                self.ledger.saw("connection")
                continue  # this replica is down: the other one
            self.ledger.saw(str(r.status_code))
            return r
        return None

    def race(self, tenant: str, seed: int) -> None:
        """Fine-tune an adapter and, while the job runs, promote, roll back or delete it."""
        rng, key = random.Random(seed), self.keys[tenant]
        examples = [{"text": t, "label": label} for t, label in TICKETS * 2]
        while not self.stop.is_set():
            r = self.call("POST", "/v1/finetune", key, json={"tenant": tenant, "adapter": "race", "examples": examples,
                                                             "params": {"method": "head", "epochs": rng.choice([5, 30])}})
            if r is None or r.status_code != 202:
                time.sleep(0.5)
                continue
            job = r.json()["job_id"]
            time.sleep(rng.uniform(0.2, 2.0))
            op = rng.choice(["promote", "rollback", "delete", "none"])
            base = f"/v1/tenants/{tenant}/adapters/race"
            if op == "promote":
                versions = self.call("GET", base + "/versions", key)
                if versions is not None and versions.status_code == 200 and versions.json()["versions"]:
                    target = rng.choice(versions.json()["versions"])["version"]
                    self.call("POST", base + "/promote", key, json={"version": target})
            elif op == "rollback":
                self.call("POST", base + "/rollback", key)
            elif op == "delete":
                sent = time.time()
                r = self.call("DELETE", base, key)
                if r is not None and r.status_code == 200:
                    with self.ledger.lock:
                        self.ledger.deletes.append((tenant, "race", sent))
            deadline = time.monotonic() + 60
            while not self.stop.is_set() and time.monotonic() < deadline:
                r = self.call("GET", f"/v1/jobs/{job}", key)
                if r is not None and r.status_code == 200 and r.json()["status"] in ENDED:
                    break
                time.sleep(0.3)

    def send_bad_input(self) -> None:
        n = 0
        while not self.stop.is_set():
            name, method, path, kw = self.bad[n % len(self.bad)]
            r = self.call(method, path, self.admin_key, **dict(kw))
            if r is not None:
                with self.ledger.lock:
                    self.ledger.bad_input[f"{name}: {r.status_code}"] += 1
                    if r.status_code >= 500:
                        self.ledger.bad_input_5xx.append(f"{name}: {r.status_code} {r.text[:200]}")
            n += 1
            time.sleep(0.1)


def via_proxy(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


def locust_outcomes(prefix: Path) -> tuple[int, Counter[str]]:
    """(requests, failures by status) from locust's CSV files."""
    with (prefix.parent / f"{prefix.name}_stats.csv").open() as fh:
        total = next(int(r["Request Count"]) for r in csv.DictReader(fh) if r["Name"] == "Aggregated")
    failures: Counter[str] = Counter()
    path = prefix.parent / f"{prefix.name}_failures.csv"
    if path.exists():
        with path.open() as fh:
            for r in csv.DictReader(fh):
                error = r["Error"]
                code = re.search(r"StatusCode\.([A-Z_]+)", error) or re.search(r"\b([45]\d\d)\b", error)
                label = code.group(1) if code else ("connection" if "onnect" in error else error[:60])
                failures[label] += int(r["Occurrences"])
    return total, failures


def chaos(database_url: str, home: Path, logs: Path, seconds: float = 60.0) -> dict[str, Any]:
    from sqlalchemy import create_engine, text

    from adapters.registry import Registry, normalise_url
    from tests.integration.server import ADMIN_KEY, SIGNING_KEY, Server
    from tests.integration.tcp_proxy import TcpProxy

    Registry(database_url).close()  # migrate once, directly
    proxy = TcpProxy((urlsplit(normalise_url(database_url)).hostname or "127.0.0.1",
                      urlsplit(normalise_url(database_url)).port or 5432)).start()
    through = via_proxy(database_url, proxy.port)
    env = dict(GRAFT_DATABASE_URL=through, GRAFT_TRAIN_WORKERS="0", GRAFT_REGISTRY_POLL_MS="200",
               GRAFT_AUTH_MAX_FAILURES="0", GRAFT_JOB_LEASE_S="8")
    a, b = Server(home, logs / "api-a.log", **env), Server(home, logs / "api-b.log", **env)
    trainer_env = {**os.environ, "GRAFT_HOME": str(home), "GRAFT_DATABASE_URL": through, "GRAFT_JOB_POLL_MS": "100",
                   "GRAFT_JOB_LEASE_S": "8", "GRAFT_TRAIN_METRICS_PORT": "0", "GRAFT_SIGNING_KEY": SIGNING_KEY}

    def start_trainer() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "service.worker"], cwd=ROOT, env=trainer_env,
                                stdout=(logs / "trainer.log").open("ab"), stderr=subprocess.STDOUT)

    trainer = start_trainer()
    ledger = Ledger()
    timeline: list[str] = []
    locust: subprocess.Popen[bytes] | None = None
    try:
        starts = [threading.Thread(target=s.start) for s in (a, b)]
        for t in starts:
            t.start()
        for t in starts:
            t.join()
        keys = {}
        with a.client() as admin:
            for i in range(3):
                tenant = f"chaos-{i}"
                keys[tenant] = admin.post("/v1/tenants", json={"tenant": tenant}).json()["api_key"]
        locust = subprocess.Popen(
            [str(Path(sys.executable).with_name("locust")), "-f", "loadtests/locustfile.py", "--headless",
             "-u", "6", "-r", "6", "-t", f"{int(seconds)}s", "--host", a.url, "--csv", str(logs / "locust"),
             "--only-summary"],
            cwd=ROOT, stdout=(logs / "locust.log").open("wb"), stderr=subprocess.STDOUT,
            env={**os.environ, "GRAFT_LOAD_KEY": ADMIN_KEY, "GRAFT_LOAD_GRPC": a.grpc_target,
                 "GRAFT_LOAD_TENANTS": "20", "GRAFT_LOAD_TEXTS": "4"},
        )
        actors = Actors(b, a, keys, ADMIN_KEY, ledger)
        threads = [threading.Thread(target=actors.race, args=(t, i)) for i, t in enumerate(keys)]
        threads.append(threading.Thread(target=actors.send_bad_input))
        for t in threads:
            t.start()
        began = time.monotonic()

        def at(moment: float) -> None:
            time.sleep(max(0.0, began + moment * seconds - time.monotonic()))

        at(0.2)
        proxy.stop()
        timeline.append(f"{time.monotonic() - began:.0f} s: registry cut")
        time.sleep(min(6.0, seconds * 0.1))
        proxy.start()
        timeline.append(f"{time.monotonic() - began:.0f} s: registry restored")
        at(0.4)
        trainer.kill()
        trainer.wait()
        timeline.append(f"{time.monotonic() - began:.0f} s: trainer killed (-9)")
        time.sleep(1.0)
        trainer = start_trainer()
        at(0.55)
        b.kill()  # requests in flight to it fail; new ones go to A until B is ready again
        actors.primary_out.set()
        timeline.append(f"{time.monotonic() - began:.0f} s: replica B killed (-9)")
        b.start()
        actors.primary_out.clear()
        timeline.append(f"{time.monotonic() - began:.0f} s: replica B ready again")
        at(1.0)
        actors.stop.set()
        for t in threads:
            t.join()
        locust.wait(120)
        load_requests, load_failures = locust_outcomes(logs / "locust")

        # Drain: every job must end once leases run out (8 s) and retries are done.
        engine = create_engine(normalise_url(database_url))
        deadline = time.monotonic() + 180
        while True:
            with engine.connect() as c:
                open_jobs = c.execute(text("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')")).scalar()
            if not open_jobs or time.monotonic() > deadline:
                break
            time.sleep(1)
        with engine.connect() as c:
            jobs = c.execute(text("SELECT tenant_id, adapter, version, finished_at, status FROM jobs")).all()
            versions = {tuple(r) for r in c.execute(text("SELECT tenant_id, adapter, version FROM adapter_versions"))}
        engine.dispose()
        lost = []
        for tenant, adapter, version, finished, status in jobs:
            if status != "succeeded":
                continue
            ended = (finished if finished.tzinfo else finished.replace(tzinfo=timezone.utc)).timestamp()
            deleted_after = any(t == tenant and ad == adapter and sent >= ended - 1.0 for t, ad, sent in ledger.deletes)
            if not deleted_after and (tenant, adapter, version) not in versions:
                lost.append((tenant, adapter, version))
        failed = Counter({k: v for k, v in ledger.outcomes.items() if not k.startswith(("2",))})
        return {
            "seconds": seconds, "timeline": timeline,
            "load_requests": load_requests, "load_failures": dict(load_failures),
            "actor_requests": sum(ledger.outcomes.values()), "actor_outcomes": dict(ledger.outcomes),
            "actor_failed": dict(failed), "bad_input": dict(ledger.bad_input), "bad_input_5xx": ledger.bad_input_5xx,
            "jobs": dict(Counter(status for *_, status in jobs)), "jobs_stuck": open_jobs or 0,
            "versions_lost": lost, "versions_checked": sum(1 for *_, s in jobs if s == "succeeded"),
            "deletes": len(ledger.deletes),
        }
    finally:
        if locust is not None and locust.poll() is None:
            locust.kill()
        trainer.terminate()
        trainer.wait(20)
        for s in (a, b):
            s.stop()
        proxy.stop()


def table(f: dict[str, Any]) -> str:
    def fmt(counts: dict[str, int]) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "none"

    bad_total = sum(f["bad_input"].values())
    return "\n".join([
        f"`make chaos`: two API replicas and a trainer on one PostgreSQL (through a cuttable proxy), "
        f"{f['seconds']:.0f} s of locust load (6 users with tenant keys: HTTP and gRPC predicts, image embeds, "
        "fine-tunes) on replica A, while actors on replica B race fine-tunes with promotes, rollbacks and deletes "
        "and send bad input. Timeline: " + "; ".join(f["timeline"]) + ".", "",
        "| measure | result |", "|---|---|",
        f"| locust requests sent | {f['load_requests']} |",
        f"| locust requests failed, by status | {fmt(f['load_failures'])} |",
        f"| actor requests sent (races, bad input) | {f['actor_requests']} |",
        f"| actor requests not 2xx, by status | {fmt(f['actor_failed'])} |",
        f"| bad-input requests / answered 5xx | {bad_total} / **{len(f['bad_input_5xx'])}** |",
        f"| jobs by final status | {fmt(f['jobs'])} |",
        f"| jobs stuck (queued or running after the drain) | **{f['jobs_stuck']}** |",
        f"| versions lost (of {f['versions_checked']} published; {f['deletes']} adapter deletes raced) | "
        f"**{len(f['versions_lost'])}** |",
    ])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--logs", type=Path, help="keep the processes' logs here (default: a temporary folder)")
    args = parser.parse_args()
    from service.settings import Settings

    with scratch_database("graft_chaos") as url, tempfile.TemporaryDirectory() as tmp:
        logs = args.logs or Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        f = chaos(url, Settings().home.resolve(), logs, args.seconds)
    print(f)
    publish(table(f), args.out, BEGIN, END)
    if f["jobs_stuck"] or f["versions_lost"] or f["bad_input_5xx"]:
        sys.exit("chaos: " + str({k: f[k] for k in ("jobs_stuck", "versions_lost", "bad_input_5xx")}))


if __name__ == "__main__":
    main()
