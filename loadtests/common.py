"""What the benchmark scripts share: timing a function, loading the HTTP API with concurrent
clients, and publishing a table into docs/BENCHMARKS.md between markers."""
from __future__ import annotations

import asyncio
import random
import statistics
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx


LOAD_LABELS = ["billing", "delivery", "technical", "praise"]


@contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """The URL of a new, empty database on the local PostgreSQL (the tests' server), dropped
    afterwards."""
    import psycopg

    from tests.conftest import POSTGRES_ADMIN_URL

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def load_tenants(n: int) -> list[str]:
    """The tenants the locust users draw from (loadtests/locustfile.py)."""
    return [f"load-{i:03d}" for i in range(n)]


def measure(fn: Callable[[list[Any]], object], texts: list[Any], batch: int, seconds: float) -> tuple[float, float]:
    """(items/s, p50 ms per call) calling fn on consecutive batches of `texts` (or any
    items) for `seconds`."""
    def chunk_at(i: int) -> list[str]:
        return [texts[(i * batch + k) % len(texts)] for k in range(batch)]

    for i in range(3):
        fn(chunk_at(i))
    lat: list[float] = []
    done = 0
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < seconds:
        chunk = chunk_at(i)
        t = time.perf_counter()
        fn(chunk)
        lat.append(time.perf_counter() - t)
        done += batch
        i += 1
    return done / (time.perf_counter() - start), statistics.median(lat) * 1000


async def http_load(
    url: str, path: str, body: Callable[[random.Random, int], dict[str, Any]], items_per_request: int,
    seconds: float, clients: int = 8, warmup_s: float = 1.0,
) -> tuple[float, float, int]:
    """(items/s, p50 ms per request, failed requests) with `clients` concurrent clients.

    `body(rng, n)` makes the n-th request of a client; the admin key authenticates.
    """
    from tests.integration.server import ADMIN_KEY, bearer

    done, errors, lat = 0, 0, []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits, headers=bearer(ADMIN_KEY)) as client:

        async def worker(wid: int, until: float, record: bool) -> None:
            nonlocal done, errors
            rng, n = random.Random(wid), wid
            while time.perf_counter() < until:
                t = time.perf_counter()
                r = await client.post(path, json=body(rng, n))
                n += clients
                if record:
                    lat.append(time.perf_counter() - t)
                    if r.status_code == 200:
                        done += items_per_request
                    else:
                        errors += 1

        await asyncio.gather(*(worker(w, time.perf_counter() + warmup_s, False) for w in range(clients)))
        start = time.perf_counter()
        await asyncio.gather(*(worker(w, start + seconds, True) for w in range(clients)))
        return done / (time.perf_counter() - start), statistics.median(lat) * 1000, errors


def predict_load(
    url: str, texts: list[str], pick_tenant: Callable[[random.Random], str], seconds: float,
    per_request: int = 16, clients: int = 8,
):
    """http_load of /v1/predict: consecutive texts, tenants drawn by `pick_tenant`."""

    def body(rng: random.Random, n: int) -> dict[str, Any]:
        start = rng.randrange(len(texts) - per_request)
        return {"tenant": pick_tenant(rng), "adapter": "default", "inputs": texts[start : start + per_request]}

    return http_load(url, "/v1/predict", body, per_request, seconds, clients)


def write(path: Path, table: str, begin: str, end: str) -> None:
    """Replace the block between the markers (or append it) in a markdown file."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{table}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def publish(table: str, out: Path | None, begin: str, end: str) -> None:
    """Print the table, and write it into `out` between the markers when asked."""
    print("\n" + table)
    if out:
        write(out, table, begin, end)


async def lean_http_load(
    url: str, path: str, body: Callable[[random.Random, int], dict[str, Any]], items_per_request: int,
    seconds: float, clients: int = 8, warmup_s: float = 1.0, headers: dict[str, str] | None = None,
) -> tuple[float, float, int]:
    """http_load with a lean client: each of `clients` keeps one HTTP/1.1 connection and
    writes the request bytes itself (orjson body, keep-alive), reading the status line,
    headers and a Content-Length body. httpx spent more CPU per request than the servers
    measured (5.5 ms per one-text request here), and the clients share the machine with
    the server: a heavy client measures itself. Same return value as http_load."""
    import orjson
    from urllib.parse import urlsplit

    if headers is None:
        from tests.integration.server import ADMIN_KEY, bearer

        headers = bearer(ADMIN_KEY)
    target = urlsplit(url)
    head = "".join(f"{k}: {v}\r\n" for k, v in {"host": target.netloc, "content-type": "application/json",
                                                   **headers}.items())
    done, errors, lat = 0, 0, []

    async def call(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> int:
        writer.write(f"POST {path} HTTP/1.1\r\n{head}content-length: {len(payload)}\r\n\r\n".encode() + payload)
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            elif name.strip().lower() == b"transfer-encoding":
                raise RuntimeError("lean_http_load reads Content-Length bodies only")
        await reader.readexactly(length)
        return status

    async def worker(wid: int, until: float, record: bool) -> None:
        nonlocal done, errors
        reader, writer = await asyncio.open_connection(target.hostname, target.port)
        rng, n = random.Random(wid), wid
        try:
            while time.perf_counter() < until:
                t = time.perf_counter()
                status = await call(reader, writer, orjson.dumps(body(rng, n)))
                n += clients
                if record:
                    lat.append(time.perf_counter() - t)
                    if status == 200:
                        done += items_per_request
                    else:
                        errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(worker(w, time.perf_counter() + warmup_s, False) for w in range(clients)))
    start = time.perf_counter()
    await asyncio.gather(*(worker(w, start + seconds, True) for w in range(clients)))
    return done / (time.perf_counter() - start), statistics.median(lat) * 1000, errors
