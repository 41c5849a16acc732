"""Prometheus metrics of the server, on its own registry (so several apps in one process never collide)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

from ..paint.engine import Engine

disable_created_metrics()  # no *_created series: nothing reads them, and they double the page
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120)


class Metrics:
    def __init__(self, engine: Engine):
        self.registry = CollectorRegistry()
        self.queue_depth: Callable[[], int] = lambda: 0
        self.requests = Counter("stylelora_requests", "HTTP requests answered", ["endpoint", "status"],
                                registry=self.registry)
        self.latency = Histogram("stylelora_request_seconds", "time to answer a request", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.images = Counter("stylelora_images", "images painted", registry=self.registry)
        self.batches = Histogram("stylelora_batch_images", "images per pipeline call",
                                 buckets=(1, 2, 4, 8, 16, 32), registry=self.registry)
        Gauge("stylelora_queue_depth", "requests waiting to be painted",
              registry=self.registry).set_function(lambda: self.queue_depth())
        Gauge("stylelora_resident_adapters", "adapters held in RAM",
              registry=self.registry).set_function(lambda: len(engine.pool.resident))
        Gauge("stylelora_resident_adapter_bytes", "bytes of adapter tensors held in RAM",
              registry=self.registry).set_function(lambda: engine.pool.resident_bytes)
        Gauge("stylelora_adapter_switches_total", "times the active adapters changed between batches",
              registry=self.registry).set_function(lambda: engine.switches.count)
        Gauge("stylelora_adapter_loads_total", "adapter files read into RAM",
              registry=self.registry).set_function(lambda: engine.pool.loads)

    def request_done(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def batch_done(self, images: int, seconds: float) -> None:
        self.images.inc(images)
        self.batches.observe(images)

    def text(self) -> bytes:
        return generate_latest(self.registry)
