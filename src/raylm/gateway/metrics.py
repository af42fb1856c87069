"""Prometheus metrics of one gateway, in a registry of its own (several gateways can
live in one process, e.g. in tests)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from raylm.autoscaling import AutoscaleStatus
from raylm.gateway.admission import PRIORITIES, Admission
from raylm.gateway.engines import EngineView
from raylm.gateway.kv_policy import KvAware
from raylm.gateway.routing import ReplicaTable
from raylm.replica import ReplicaState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _ReplicaCollector(Collector):
    """Replica states, in-flight counts and restarts, read from the table at scrape time."""

    def __init__(self, table: ReplicaTable) -> None:
        self._table = table

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "raylm_replica_state",
            "1 for the state each replica is in (as reported by the controller).",
            labels=["replica", "model", "node", "state"],
        )
        in_flight = GaugeMetricFamily(
            "raylm_replica_in_flight",
            "Requests in flight per replica.",
            labels=["replica", "model"],
        )
        restarts = CounterMetricFamily(
            "raylm_replica_restarts",
            "Times each replica was restarted (as reported by the controller).",
            labels=["replica", "model"],
        )
        ready = GaugeMetricFamily(
            "raylm_model_ready_replicas", "Routable replicas per model.", labels=["model"]
        )
        for r in self._table.replicas:
            for s in ReplicaState:
                state.add_metric([r.replica_id, r.model, r.node, s.value], float(r.state is s))
            in_flight.add_metric([r.replica_id, r.model], self._table.in_flight(r.replica_id))
            restarts.add_metric([r.replica_id, r.model], r.restarts)
        for m in self._table.status():
            ready.add_metric([m.model], m.ready)
        yield from (state, in_flight, restarts, ready)


class AdmissionCollector(Collector):
    """The models' wait queues (raylm.gateway.admission), read at scrape time."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission

    def collect(self) -> Iterator[Metric]:
        waiting = GaugeMetricFamily(
            "raylm_queue_waiting",
            "Requests waiting in the gateway for a slot of their model, by priority.",
            labels=["model", "priority"],
        )
        refused = CounterMetricFamily(
            "raylm_queue_refused",
            "Requests refused by a model's queue: queue_full or queue_timeout.",
            labels=["model", "reason"],
        )
        a = self._admission
        for model in a.models():
            for priority in PRIORITIES:
                waiting.add_metric([model, priority], a.waiting(model, priority))
        for (model, reason), n in a.refused.items():
            refused.add_metric([model, reason], n)
        yield from (waiting, refused)


class AutoscaleCollector(Collector):
    """The controller's autoscaling of each model (raylm.serve.autoscaler), as it answered
    the gateway's last load report."""

    def __init__(self, statuses: Callable[[], list[AutoscaleStatus]]) -> None:
        self._statuses = statuses

    def collect(self) -> Iterator[Metric]:
        desired = GaugeMetricFamily(
            "raylm_autoscale_desired_replicas", "Replicas the controller keeps.", labels=["model"]
        )
        wanted = GaugeMetricFamily(
            "raylm_autoscale_wanted_replicas",
            "Replicas the load wants, inside the bounds (acted on after the delay).",
            labels=["model"],
        )
        load = GaugeMetricFamily(
            "raylm_autoscale_load",
            "Requests in flight or waiting over every gateway, averaged over the look-back.",
            labels=["model"],
        )
        decisions = CounterMetricFamily(
            "raylm_autoscale_decisions",
            "Replica count changes the autoscaler made.",
            labels=["model", "direction"],
        )
        for s in self._statuses():
            desired.add_metric([s.model], s.desired)
            wanted.add_metric([s.model], s.wanted)
            load.add_metric([s.model], s.load)
            decisions.add_metric([s.model, "up"], s.ups)
            decisions.add_metric([s.model, "down"], s.downs)
        yield from (desired, wanted, load, decisions)


class EngineCollector(Collector):
    """Each ready replica's engine stats (raylm.gateway.engines), as last scraped."""

    def __init__(self, table: ReplicaTable, engines: EngineView) -> None:
        self._table = table
        self._engines = engines

    def collect(self) -> Iterator[Metric]:
        labels = ["replica", "model"]
        kv = GaugeMetricFamily(
            "raylm_engine_kv_cache_usage", "Share of the KV cache in use (0..1).", labels=labels
        )
        running = GaugeMetricFamily(
            "raylm_engine_requests_running", "Requests the engine is computing.", labels=labels
        )
        waiting = GaugeMetricFamily(
            "raylm_engine_requests_waiting", "Requests queued in the engine.", labels=labels
        )
        hits = CounterMetricFamily(
            "raylm_engine_prefix_cache_hits",
            "Prompt tokens the engine served from its prefix cache.",
            labels=labels,
        )
        queries = CounterMetricFamily(
            "raylm_engine_prefix_cache_queries",
            "Prompt tokens the engine looked up in its prefix cache.",
            labels=labels,
        )
        generated = CounterMetricFamily(
            "raylm_engine_generation_tokens",
            "Tokens the engine generated (every answer; from 0 again when it restarts).",
            labels=labels,
        )
        for r in self._table.replicas:
            st = self._engines.get(r.replica_id)
            if st is None:
                continue
            key = [r.replica_id, r.model]
            generated.add_metric(key, st.generation_tokens)
            kv.add_metric(key, st.kv_cache_usage)
            running.add_metric(key, st.running)
            waiting.add_metric(key, st.waiting)
            hits.add_metric(key, st.prefix_cache_hits)
            queries.add_metric(key, st.prefix_cache_queries)
        yield from (kv, running, waiting, hits, queries, generated)


class KvIndexCollector(Collector):
    """kv-aware routing's copy of the engines' caches (raylm.gateway.kv_index)."""

    def __init__(self, table: ReplicaTable, kv: KvAware) -> None:
        self._table = table
        self._index = kv.index
        self._tokens = kv.tokens

    def collect(self) -> Iterator[Metric]:
        labels = ["replica", "model"]
        synced = GaugeMetricFamily(
            "raylm_kv_index_synced",
            "1 once the replica's cached blocks were read from its events; 0: routing "
            "knows nothing of its cache yet (a new gateway or replica starts so).",
            labels=labels,
        )
        blocks = GaugeMetricFamily(
            "raylm_kv_index_blocks", "Blocks the replica's engine holds.", labels=labels
        )
        gaps = GaugeMetricFamily(
            "raylm_kv_index_gaps",
            "Event batches of the replica that were lost (its cache is known less well).",
            labels=labels,
        )
        tokenizer = GaugeMetricFamily(
            "raylm_kv_tokenizer_loaded",
            "1 once the model's tokenizer is loaded (in the background at start); 0: its "
            "requests are routed by load (still loading, or the model has none).",
            labels=["model"],
        )
        for r in self._table.replicas:
            key = [r.replica_id, r.model]
            synced.add_metric(key, float(r.replica_id in self._index.cursors))
            blocks.add_metric(key, self._index.blocks_held(r.replica_id))
            gaps.add_metric(key, self._index.gaps.get(r.replica_id, 0))
        for model in sorted({r.model for r in self._table.replicas}):
            tokenizer.add_metric([model], float(self._tokens.loaded(model)))
        yield from (synced, blocks, gaps, tokenizer)


class GatewayMetrics:
    """Counters and histograms the request path updates."""

    def __init__(self, table: ReplicaTable) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "raylm_requests", "Requests by route and HTTP status.", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "raylm_request_latency_seconds",
            "Time from request to last byte of the answer.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "raylm_time_to_first_token_seconds",
            "Streams: time from request to the first byte from the replica.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "raylm_requests_in_flight", "Requests being served by replicas now.", registry=r
        )
        self.prompt_tokens = Counter(
            "raylm_prompt_tokens", "Prompt tokens, from `usage` in answers.", ["model"], registry=r
        )
        self.completion_tokens = Counter(
            "raylm_completion_tokens",
            "Completion tokens, from `usage` in answers.",
            ["model"],
            registry=r,
        )
        self.routed = Counter(
            "raylm_replica_requests",
            "Requests sent to each replica (a retried request counts on both).",
            ["replica"],
            registry=r,
        )
        self.routing = Counter(
            "raylm_routing_decisions",
            "Replica choices of the routing policy, by why the replica was chosen "
            "(prefix, cost, session, overload, no-match, no-key, or the policy's name).",
            ["policy", "reason"],
            registry=r,
        )
        self.predicted_cached = Counter(
            "raylm_routing_predicted_cached_tokens",
            "Prompt tokens the routing policy expected the chosen replica to have cached "
            "(compare with raylm_engine_prefix_cache_hits_total, what the engine found).",
            ["replica"],
            registry=r,
        )
        self.retries = Counter(
            "raylm_retries",
            "Requests retried on another replica after one failed before sending a byte.",
            ["route"],
            registry=r,
        )
        self.failovers = Counter(
            "raylm_failovers",
            "Times a replica failed a request before its first byte and was taken out of "
            "rotation by the gateway.",
            ["replica"],
            registry=r,
        )
        self.stream_errors = Counter(
            "raylm_stream_errors",
            "Streams that ended with an error event because their replica failed mid-way.",
            ["route"],
            registry=r,
        )
        self.rate_limited = Counter(
            "raylm_rate_limited",
            "Requests refused with 429 because their API key was over a rate limit, by key "
            "name and limit (requests or tokens).",
            ["key", "limit"],
            registry=r,
        )
        self.on_tokens: Callable[[int], None] | None = None
        """Called with each answer's prompt plus completion tokens (per-key rate limits)."""
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r.register(_ReplicaCollector(table))

    def child(self, metric: MetricWrapperBase, *labels: str) -> Any:
        """`metric.labels(*labels)`, remembered: labels() checks and locks on every call,
        which the request path would pay several times a request. The label values are
        routes, statuses, models, replicas and reasons: a bounded set."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        self.child(self.requests, route, str(status)).inc()
        self.child(self.latency, route).observe(seconds)

    def count_usage(self, model: str, usage: object) -> None:
        """Add a response's `usage` object to the token counters, if it is well formed."""
        if not isinstance(usage, dict):
            return
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int) and prompt >= 0:
            self.child(self.prompt_tokens, model).inc(prompt)
        if isinstance(completion, int) and completion >= 0:
            self.child(self.completion_tokens, model).inc(completion)
        if self.on_tokens is not None:
            used = sum(n for n in (prompt, completion) if isinstance(n, int) and n > 0)
            self.on_tokens(used)

    def render(self) -> bytes:
        return generate_latest(self.registry)
