"""The metrics registry every subsystem reports into, rendered as Prometheus text at `/metrics`.

Each `Metrics` owns its own `CollectorRegistry`, so a test can build many servers in one process.
Event-driven series (tokens, latencies, outcomes) are pushed by the engine driver; point-in-time
series (queue depth, KV blocks, preemptions) are pulled from a snapshot callback at scrape time.
All names carry the `llmos:` prefix and a `model_name` label, following vLLM's shapes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

TTFT_BUCKETS_S = (
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
ITL_BUCKETS_S = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
)
E2E_BUCKETS_S = (
    0.1,
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    60.0,
    120.0,
    240.0,
    480.0,
)

# Snapshot keys the scrape-time collector understands: key -> (metric name, kind, help text).
_SNAPSHOT_SERIES: dict[str, tuple[str, str, str]] = {
    "num_running": ("llmos:num_processes_running", "gauge", "Processes running in the kernel."),
    "num_waiting": ("llmos:num_processes_waiting", "gauge", "Processes waiting to be scheduled."),
    "num_preempted": ("llmos:num_processes_preempted", "gauge", "Processes preempted right now."),
    "kv_cache_usage_perc": ("llmos:kv_cache_usage_perc", "gauge", "KV blocks in use (0-1)."),
    "kv_blocks_used": ("llmos:kv_blocks_used", "gauge", "KV blocks held by live processes."),
    "kv_blocks_cached": ("llmos:kv_blocks_cached", "gauge", "Free KV blocks kept for reuse."),
    "kv_blocks_total": ("llmos:kv_blocks_total", "gauge", "KV blocks in the pool."),
    "kernel_alive": ("llmos:kernel_alive", "gauge", "1 while the engine loop is ticking."),
    "num_preemptions": ("llmos:num_preemptions", "counter", "Preemptions since start."),
    "prefix_cache_hits": ("llmos:prefix_cache_hits", "counter", "Prompt blocks found cached."),
    "prefix_cache_queries": ("llmos:prefix_cache_queries", "counter", "Prompt blocks looked up."),
    "num_ticks": ("llmos:engine_ticks", "counter", "Engine ticks since start."),
    "schedule_seconds": (
        "llmos:scheduler_seconds",
        "counter",
        "Seconds the scheduler spent deciding ticks since start.",
    ),
    "schedule_share": (
        "llmos:scheduler_time_share",
        "gauge",
        "Share of tick time spent scheduling (the policy's per-tick cost), since start.",
    ),
    "predictor_kendall_tau": (
        "llmos:predictor_kendall_tau",
        "gauge",
        "Kendall's tau between predicted and actual output tokens over recent processes.",
    ),
}


class _SnapshotCollector(Collector):
    """Turns per-model dict snapshots from the kernel into gauges and counters at scrape time."""

    def __init__(self, source: Callable[[], Mapping[str, Mapping[str, float]]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        snapshots = self._source()
        for key, (name, kind, doc) in _SNAPSHOT_SERIES.items():
            family: GaugeMetricFamily | CounterMetricFamily
            if kind == "gauge":
                family = GaugeMetricFamily(name, doc, labels=["model_name"])
            else:
                family = CounterMetricFamily(name, doc, labels=["model_name"])
            for model_name, snapshot in snapshots.items():
                if key in snapshot:
                    family.add_metric([model_name], float(snapshot[key]))
            if family.samples:
                yield family


class ModelMetrics:
    """The event-driven series of one model, bound to its `model_name` label."""

    def __init__(self, metrics: Metrics, model_name: str) -> None:
        self.model_name = model_name
        self.prompt_tokens = metrics.prompt_tokens.labels(model_name)
        self.generation_tokens = metrics.generation_tokens.labels(model_name)
        self.cached_prompt_tokens = metrics.cached_prompt_tokens.labels(model_name)
        self.ttft_s = metrics.ttft_s.labels(model_name)
        self.itl_s = metrics.itl_s.labels(model_name)
        self.e2e_s = metrics.e2e_s.labels(model_name)
        self._finished = metrics.finished
        self._rejected = metrics.rejected
        self._failures = metrics.engine_failures.labels(model_name)
        self._timing = (
            metrics.queue_time_s.labels(model_name),
            metrics.prefill_time_s.labels(model_name),
            metrics.decode_time_s.labels(model_name),
            metrics.preempted_time_s.labels(model_name),
        )
        self._restarts = metrics.engine_restarts.labels(model_name)

    def process_finished(self, finish_reason: str) -> None:
        self._finished.labels(self.model_name, finish_reason).inc()

    def admission_rejected(self, reason: str) -> None:
        self._rejected.labels(self.model_name, reason).inc()

    def request_timing(
        self, queue_s: float, prefill_s: float, decode_s: float, preempted_s: float
    ) -> None:
        """Where one finished request's time went (see kernel.outputs.RequestTiming)."""
        for histogram, seconds in zip(
            self._timing, (queue_s, prefill_s, decode_s, preempted_s), strict=True
        ):
            histogram.observe(seconds)

    def engine_failed(self) -> None:
        self._failures.inc()

    def engine_restarted(self) -> None:
        self._restarts.inc()


class Metrics:
    """One server's metrics, every series labelled by model. Thread-safe: the engine driver
    thread and the API both write."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["model_name"]
        r = self.registry
        self.prompt_tokens = Counter(
            "llmos:prompt_tokens", "Prompt tokens of admitted processes.", labels, registry=r
        )
        self.generation_tokens = Counter(
            "llmos:generation_tokens", "Tokens generated.", labels, registry=r
        )
        self.cached_prompt_tokens = Counter(
            "llmos:cached_prompt_tokens",
            "Prompt tokens served from the prefix cache.",
            labels,
            registry=r,
        )
        self.ttft_s = Histogram(
            "llmos:time_to_first_token_seconds",
            "Submission to first output token.",
            labels,
            buckets=TTFT_BUCKETS_S,
            registry=r,
        )
        self.itl_s = Histogram(
            "llmos:inter_token_latency_seconds",
            "Time between output tokens of one process.",
            labels,
            buckets=ITL_BUCKETS_S,
            registry=r,
        )
        self.e2e_s = Histogram(
            "llmos:e2e_request_latency_seconds",
            "Submission to last output token.",
            labels,
            buckets=E2E_BUCKETS_S,
            registry=r,
        )
        self.finished = Counter(
            "llmos:process_finished",
            "Processes ended, by finish reason (stop, length, killed, error).",
            ["model_name", "finish_reason"],
            registry=r,
        )
        self.rejected = Counter(
            "llmos:admission_rejected",
            "Requests refused at the door, by reason.",
            ["model_name", "reason"],
            registry=r,
        )
        self.queue_time_s = Histogram(
            "llmos:request_queue_time_seconds",
            "Request received to first scheduled in a tick.",
            labels,
            buckets=E2E_BUCKETS_S,
            registry=r,
        )
        self.prefill_time_s = Histogram(
            "llmos:request_prefill_time_seconds",
            "First scheduled to first token, without time preempted.",
            labels,
            buckets=E2E_BUCKETS_S,
            registry=r,
        )
        self.decode_time_s = Histogram(
            "llmos:request_decode_time_seconds",
            "First token to last token, without time preempted.",
            labels,
            buckets=E2E_BUCKETS_S,
            registry=r,
        )
        self.preempted_time_s = Histogram(
            "llmos:request_preempted_time_seconds",
            "Time a request spent preempted (swapped out or waiting to be recomputed).",
            labels,
            buckets=E2E_BUCKETS_S,
            registry=r,
        )
        self.engine_failures = Counter(
            "llmos:engine_failures",
            "Ticks that failed (their batch's processes ended with an error).",
            labels,
            registry=r,
        )
        self.engine_restarts = Counter(
            "llmos:engine_restarts",
            "Engines rebuilt after repeated failures (fresh KV pool, model reloaded).",
            labels,
            registry=r,
        )
        self._models: dict[str, ModelMetrics] = {}
        self._lock = threading.Lock()

    def model(self, model_name: str) -> ModelMetrics:
        """The series of one model (made on first use)."""
        with self._lock:
            found = self._models.get(model_name)
            if found is None:
                found = self._models[model_name] = ModelMetrics(self, model_name)
            return found

    def add_snapshot_source(self, source: Callable[[], Mapping[str, Mapping[str, float]]]) -> None:
        """Register the kernel's scrape-time snapshot, {model_name: {key: value}} (queue depth,
        KV blocks, preemptions of each resident model)."""
        self.registry.register(_SnapshotCollector(source))

    def render(self) -> bytes:
        """The Prometheus text exposition of every series."""
        return generate_latest(self.registry)
