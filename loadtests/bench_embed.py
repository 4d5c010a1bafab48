"""`make bench`: torch eager vs ORT fp32 vs ORT int8 vs the service over HTTP, one run.

Every figure comes from this one process on this machine, so the ratios hold even on a
shared, noisy host. The table goes to stdout and into docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
from datetime import datetime, timezone
from pathlib import Path


from loadtests.common import http_load, measure, publish
from loadtests.data import rotten_tomatoes

BEGIN, END = "<!-- bench_embed:begin -->", "<!-- bench_embed:end -->"


def window(texts: list[str], start: int, n: int) -> list[str]:
    return [texts[(start + k) % len(texts)] for k in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0, help="measuring time per row")
    parser.add_argument("--out", type=Path, help="markdown file to update between the bench markers")
    args = parser.parse_args()

    import numpy as np
    import torch

    from models import load_backbone
    from models.catalog import resolve_spec
    from models.export import load_torch_encoder
    from models.text import load_tokenizer
    from service.settings import Settings
    from tests.integration.server import Server

    settings = Settings()
    texts = [t for t, _ in rotten_tomatoes(2048)]
    spec = resolve_spec("minilm-l6")
    tok = load_tokenizer(spec)
    torch.set_num_threads(os.cpu_count() or 1)
    model = load_torch_encoder(spec)

    def torch_embed(batch: list[str]) -> np.ndarray:
        ids, mask, _ = tok.encode(batch)
        with torch.no_grad():
            return model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()

    rows: list[tuple[str, str, float, float]] = []
    for name, embed in [
        ("torch eager (fp32)", torch_embed),
        ("ORT fp32", load_backbone("minilm-l6", settings.home, precision="fp32", provider="cpu").embed),
        ("ORT int8", load_backbone("minilm-l6", settings.home, precision="int8", provider="cpu").embed),
    ]:
        for batch in (1, 32):
            rate, p50 = measure(embed, texts, batch, args.seconds)
            rows.append((name, f"batch {batch}", rate, p50))
            print(f"{name:22s} batch {batch:2d}: {rate:7.1f} sentences/s  p50 {p50:7.1f} ms", flush=True)

    with tempfile.TemporaryDirectory() as logs:
        server = Server(settings.home, Path(logs) / "server.log", GRAFT_PRECISION="int8", GRAFT_PROVIDER="cpu").start()
        try:
            for per_request, clients in ((1, 32), (16, 8), (32, 4)):
                rate, p50, errors = asyncio.run(http_load(
                    server.url, "/v1/embed", lambda rng, n, k=per_request: {"inputs": window(texts, n * k, k)},
                    per_request, args.seconds, clients, warmup_s=1.5))
                label = f"{per_request} texts/request, {clients} clients"
                rows.append(("service over HTTP (int8)", label, rate, p50))
                print(f"service {label}: {rate:7.1f} sentences/s  p50 {p50:7.1f} ms  errors {errors}", flush=True)
                if errors:
                    raise SystemExit(f"{errors} failed requests during the benchmark")
        finally:
            server.stop()

    ceiling = max(r[2] for r in rows if r[0] == "ORT int8")  # the best raw figure, whichever batch
    publish(render(rows, ceiling), args.out, BEGIN, END)


def render(rows: list[tuple[str, str, float, float]], ceiling: float) -> str:
    from models.export import library_versions

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    versions = ", ".join(f"{k} {v}" for k, v in library_versions().items())
    lines = [
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {cpu}, {os.cpu_count()} cores "
        f"(load generator on the same cores), {versions}. Texts: Rotten Tomatoes reviews; "
        "sentences/s includes tokenisation; the ratio column divides by the best raw ORT int8 figure.",
        "",
        "| path | load | sentences/s | p50 latency (ms) | × best raw ORT int8 |",
        "|---|---|---:|---:|---:|",
    ]
    for name, load, rate, p50 in rows:
        lines.append(f"| {name} | {load} | {rate:.1f} | {p50:.1f} | {rate / ceiling:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
