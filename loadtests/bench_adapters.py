"""`make bench`: adapters at scale, measured in one run.

(a) throughput when requests spread over 100 tenants (Zipf) vs all on one tenant;
(b) 10,000 adapters registered, 1,000 made resident: the server's memory growth over its
    idle state, and the p50 cold load of one adapter (registry read, checksum, decode);
(c) bytes per tenant: one adapter vs one fine-tuned copy of the backbone.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from loadtests.common import predict_load, publish
from loadtests.data import rotten_tomatoes

BEGIN, END = "<!-- bench_adapters:begin -->", "<!-- bench_adapters:end -->"
WORDS = ("positive negative neutral refund shipping account billing sports politics science music art travel "
         "food health finance weather technology fashion gaming education legal medical urgent spam question "
         "complaint praise bug feature cancel upgrade").split()


def tree_rss(pid: int) -> int:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])


def zipf_weights(n: int, s: float = 1.1) -> list[float]:
    w = [1 / (k ** s) for k in range(1, n + 1)]
    return [x / sum(w) for x in w]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--adapters", type=int, default=10_000)
    parser.add_argument("--resident", type=int, default=1_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from adapters import zero_shot
    from adapters.cache import AdapterCache, BackboneRef
    from adapters.format import encode
    from adapters.registry import Registry
    from models.catalog import resolve_spec
    from models.int8 import choose_int8
    from service.settings import Settings
    from tests.integration.server import SIGNING_KEY, Server

    settings = Settings()
    texts = [t for t, _ in rotten_tomatoes(4096)]
    rng = np.random.default_rng(0)
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite:///{tmp}/registry.db"
        # The rate limit is per tenant; this measures capacity, so it is off here.
        server = Server(settings.home, Path(tmp) / "server.log", GRAFT_DATABASE_URL=db, GRAFT_RATE_LIMIT_RPS="0").start()
        try:
            client = server.client()
            ready = client.get("/readyz").json()["backbones"][0]
            word_vectors = dict(zip(WORDS, np.array(client.post("/v1/embed", json={"inputs": WORDS}).json()["embeddings"])))

            # Register the adapters as the trainer would: straight into the registry.
            registry = Registry(db, migrate=False, signing_key=SIGNING_KEY.encode())  # the server's key
            tenants = [f"tenant-{i:05d}" for i in range(args.adapters)]
            started = time.perf_counter()
            sizes = []
            for tenant in tenants:
                labels = list(rng.choice(WORDS, size=int(rng.integers(2, 6)), replace=False))
                config, weights = encode(*zero_shot.build(ready["id"], ready["fingerprint"], labels,
                                                          np.stack([word_vectors[w] for w in labels])))
                sizes.append(len(weights) + len(config.to_json()))
                registry.create_tenant(tenant)
                registry.create_adapter(tenant, "default", config, weights)
            print(f"registered {args.adapters} adapters in {time.perf_counter() - started:.1f}s", flush=True)

            # (a) 100 tenants drawn Zipf-like vs a single tenant, same texts, same load.
            hundred, weights100 = tenants[:100], zipf_weights(100)
            for t in hundred:  # warm: throughput, not cold loads, is measured here
                client.post("/v1/predict", json={"tenant": t, "inputs": ["warm"]})
            one_rate, one_p50, e1 = asyncio.run(predict_load(server.url, texts, lambda r: tenants[0], args.seconds))
            zipf_rate, zipf_p50, e2 = asyncio.run(predict_load(server.url, texts, lambda r: r.choices(hundred, weights100)[0], args.seconds))
            one_rate2, one_p50_2, e3 = asyncio.run(predict_load(server.url, texts, lambda r: tenants[0], args.seconds))
            one_rate, one_p50 = (one_rate + one_rate2) / 2, (one_p50 + one_p50_2) / 2
            print(f"one tenant {one_rate:.1f}/s, 100 Zipf tenants {zipf_rate:.1f}/s", flush=True)
            if e1 + e2 + e3:
                raise SystemExit(f"{e1 + e2 + e3} failed requests")

            # (b) memory: idle service vs 1,000 resident adapters.
            time.sleep(1)
            idle = tree_rss(server.proc.pid)
            cold_http = []
            for t in tenants[100 : 100 + args.resident]:
                s = time.perf_counter()
                r = client.post("/v1/predict", json={"tenant": t, "inputs": ["a short text"]})
                cold_http.append(time.perf_counter() - s)
                assert r.status_code == 200, r.text
            warm_http = []
            for t in tenants[100 : 100 + 200]:
                s = time.perf_counter()
                client.post("/v1/predict", json={"tenant": t, "inputs": ["a short text"]})
                warm_http.append(time.perf_counter() - s)
            time.sleep(1)
            grown = tree_rss(server.proc.pid) - idle
            metrics = client.get("/metrics").text
            resident = next(float(l.split()[-1]) for l in metrics.splitlines() if l.startswith("graft_adapter_cache_resident "))
            print(f"RSS growth to {resident:.0f} resident adapters: {grown / 2**20:.1f} MiB", flush=True)
        finally:
            server.stop()

        # Cold load in-process: registry read + SHA-256 + fingerprint/shape checks + decode.
        async def cold_loads() -> list[float]:
            cache = AdapterCache(registry, {ready["id"]: BackboneRef(ready["fingerprint"], ready["dim"])}.get,
                                 max_bytes=1 << 30)
            out = []
            for t in tenants[-1000:]:
                s = time.perf_counter()
                async with cache.lease(t, "default"):
                    pass
                out.append(time.perf_counter() - s)
            return out

        cold = asyncio.run(cold_loads())
        registry.close()

    spec = resolve_spec("minilm-l6")
    backbone_bytes = (spec.path / "model.safetensors").stat().st_size
    int8_bytes = choose_int8(spec, settings.home).path.stat().st_size  # what the gate serves here
    adapter_bytes = statistics.median(sizes)
    rows = [
        ("(a) throughput, 100 tenants (Zipf s=1.1) / one tenant", f"{zipf_rate:.1f} / {one_rate:.1f} texts/s = **{zipf_rate / one_rate:.2f}** (target ≥ 0.9); p50 {zipf_p50:.0f} / {one_p50:.0f} ms"),
        (f"(b) server memory growth from idle to {resident:,.0f} resident adapters ({args.adapters:,} registered)",
         f"**{grown / 2**20:.1f} MiB** (target < 150 MB)"),
        ("(b) cold load of one adapter, p50 (p95), in process", f"**{statistics.median(cold) * 1000:.2f} ms** ({np.percentile(cold, 95) * 1000:.2f} ms) (target < 10 ms)"),
        ("(b) predict of one text over HTTP, cold adapter / warm adapter, p50", f"{statistics.median(cold_http) * 1000:.1f} / {statistics.median(warm_http) * 1000:.1f} ms"),
        ("(c) bytes per tenant: adapter (zero-shot head, median) vs a fine-tuned backbone copy", f"{adapter_bytes / 1024:.1f} KiB vs {backbone_bytes / 2**20:.1f} MiB fp32 ({int8_bytes / 2**20:.1f} MiB int8): **{backbone_bytes / adapter_bytes:,.0f}×** smaller"),
    ]
    table = "\n".join(
        [f"{args.adapters:,} adapters (2-5 labels each) in a SQLite registry; load: 8 clients, 16 texts per request, "
         f"{args.seconds:.0f} s per run (one-tenant runs before and after the Zipf run, averaged).", "",
         "| measure | result |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    )
    publish(table, args.out, BEGIN, END)


if __name__ == "__main__":
    main()
