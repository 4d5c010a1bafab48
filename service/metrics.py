"""Graft's own Prometheus metrics, served on /metrics beside BentoML's defaults.

BentoML runs prometheus_client in multiprocess mode, so these are plain prometheus_client
objects; gauges say how to combine values across worker processes.
"""
from __future__ import annotations

from prometheus_client import Gauge, Histogram

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
    "Seconds of one backbone pass: preprocessing plus ONNX Runtime",
    ["backbone"],
    buckets=COMPUTE_BUCKETS,
)
backbone_info = Gauge(
    "graft_backbone_info",
    "Loaded backbones with their ONNX Runtime provider and precision (value 1)",
    ["backbone", "provider", "precision"],
    multiprocess_mode="max",
)


def observe_batch(backbone: str, items: int, seconds: float) -> None:
    backbone_batch_size.labels(backbone).observe(items)
    backbone_compute_seconds.labels(backbone).observe(seconds)
