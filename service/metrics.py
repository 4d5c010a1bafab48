"""Graft's Prometheus metrics, served on /metrics by service/http.py.

BentoML starts its workers with PROMETHEUS_MULTIPROC_DIR set, so these are plain
prometheus_client objects written per process and merged at scrape time; gauges say how to
combine values across worker processes.
"""
from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess

from adapters.cache import CacheEvents

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
COMPUTE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

backbone_batch_size = Histogram(
    "graft_backbone_batch_size",
    "Items per backbone pass (micro-batches mix concurrent requests)",
    ["backbone"],
    buckets=BATCH_SIZE_BUCKETS,
)
backbone_compute_seconds = Histogram(
    "graft_backbone_compute_seconds",
    "Seconds of the backbone in one pass: preprocessing plus ONNX Runtime (heads excluded)",
    ["backbone"],
    buckets=COMPUTE_BUCKETS,
)
backbone_info = Gauge(
    "graft_backbone_info",
    "Loaded backbones with their ONNX Runtime provider, the precision served and, when int8 was "
    "asked for, the recipe the int8 gate chose ('' = fp32 fallback) and its min cosine to fp32 (value 1)",
    ["backbone", "provider", "precision", "int8_recipe", "int8_min_cosine"],
    multiprocess_mode="max",
)


backbone_batch_fill = Histogram(
    "graft_backbone_batch_fill", "Items per backbone pass as a fraction of GRAFT_BATCH_MAX_SIZE", ["backbone"],
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0),
)
backbone_items = Counter("graft_backbone_items_total", "Items embedded (rate() gives items/s)", ["backbone"])
backbone_ort_calls = Counter(
    "graft_backbone_ort_calls_total", "ONNX Runtime calls of the backbone (a pass takes one per max_rows_per_call rows)",
    ["backbone"],
)
queue_wait_seconds = Histogram(
    "graft_queue_wait_seconds", "Seconds a request's items waited for their backbone pass", ["backbone"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
head_compute_seconds = Histogram(
    "graft_head_compute_seconds", "Seconds of the adapter heads of one backbone pass", ["backbone"],
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025),
)
heads_per_batch = Histogram(
    "graft_heads_per_batch", "Distinct adapters in one backbone pass (tenants mixed in a batch)", ["backbone"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
)


def observe_batch(backbone: str, items: int, seconds: float, waits: list[float], max_size: int) -> None:
    """One micro-batch pass (its backbone and head parts are timed inside the pass)."""
    backbone_batch_size.labels(backbone).observe(items)
    backbone_batch_fill.labels(backbone).observe(min(1.0, items / max_size))
    backbone_items.labels(backbone).inc(items)
    for wait in waits:
        queue_wait_seconds.labels(backbone).observe(wait)
        _stages["queue"].observe(wait)


STAGE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
stage_seconds = Histogram(
    "graft_stage_seconds",
    "Seconds of each stage of serving. Per request: parse (body read and validated), auth "
    "(key checked), admit (tenant rate limit, tenant keys only), prepare (texts tokenised, images decoded), queue (waiting for "
    "the backbone pass), handoff (from the end of the pass until the request resumes), "
    "serialise (the response encoded). Per backbone pass: model (ONNX Runtime, padding "
    "included), head (the adapters' heads).",
    ["stage"],
    buckets=STAGE_BUCKETS,
)
_stages = {stage: stage_seconds.labels(stage) for stage in
           ("parse", "auth", "admit", "prepare", "queue", "handoff", "serialise", "model", "head")}


def observe_stage(stage: str, seconds: float) -> None:
    _stages[stage].observe(seconds)


finetune_job_seconds = Histogram(
    "graft_finetune_job_seconds", "Seconds from a worker's claim to the job's end, by final status", ["status"],
    buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)


def exposition() -> tuple[bytes, str]:
    """Every process's metrics in the Prometheus text format (merged when multiprocess)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


def jobs_by_status(counts: dict[str, int]) -> str:
    """Prometheus text for the jobs in the registry by status (computed at scrape time)."""
    lines = ["# HELP graft_finetune_jobs Fine-tune jobs in the registry by status",
             "# TYPE graft_finetune_jobs gauge"]
    for status in ("queued", "running", "succeeded", "failed", "cancelled"):
        lines.append(f'graft_finetune_jobs{{status="{status}"}} {counts.get(status, 0)}')
    return "\n".join(lines) + "\n"


def observe_heads(backbone: str, adapters: int, seconds: float) -> None:
    head_compute_seconds.labels(backbone).observe(seconds)
    heads_per_batch.labels(backbone).observe(adapters)

adapter_cache_requests = Counter(
    "graft_adapter_cache_requests_total", "Adapter lookups by result", ["result"]
)
adapter_cache_evictions = Counter("graft_adapter_cache_evictions_total", "Adapters evicted to stay under the byte budget")
adapter_load_seconds = Histogram(
    "graft_adapter_load_seconds",
    "Seconds to read, verify and load one adapter version on a cache miss",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
adapter_load_failures = Counter(
    "graft_adapter_load_failures_total", "Adapter versions refused (checksum, fingerprint, shape)", ["reason"]
)
adapter_cache_resident = Gauge(
    "graft_adapter_cache_resident", "Adapters resident in memory", multiprocess_mode="livesum"
)
adapter_cache_resident_bytes = Gauge(
    "graft_adapter_cache_resident_bytes", "Bytes of resident adapter weights", multiprocess_mode="livesum"
)


def cache_events() -> CacheEvents:
    def resident(count: int, nbytes: int) -> None:
        adapter_cache_resident.set(count)
        adapter_cache_resident_bytes.set(nbytes)

    return CacheEvents(
        on_hit=adapter_cache_requests.labels("hit").inc,
        on_miss=adapter_cache_requests.labels("miss").inc,
        on_load=adapter_load_seconds.observe,
        on_evict=adapter_cache_evictions.inc,
        on_failure=lambda reason: adapter_load_failures.labels(reason).inc(),
        on_resident=resident,
    )


http_requests = Counter(
    "graft_http_requests_total", "HTTP requests by route template, method and status", ["route", "method", "code"]
)
http_duration = Histogram(
    "graft_http_request_duration_seconds", "HTTP request latency by route template", ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def observe_http(route: str, method: str, status: int, seconds: float) -> None:
    http_requests.labels(route, method, str(status)).inc()
    http_duration.labels(route, method).observe(seconds)


grpc_requests = Counter("graft_grpc_requests_total", "gRPC calls by method and status code", ["method", "code"])
grpc_duration = Histogram(
    "graft_grpc_request_duration_seconds", "gRPC call latency by method", ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def observe_grpc(method: str, code: str, seconds: float) -> None:
    grpc_requests.labels(method, code).inc()
    grpc_duration.labels(method).observe(seconds)
