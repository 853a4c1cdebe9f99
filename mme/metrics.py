"""The local endpoint's Prometheus metrics (``GET /metrics``), in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class EndpointMetrics:
    """Cache, load and invocation metrics of one local endpoint."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.cache_hits = Counter("mme_cache_hits", "Invocations whose model was already loaded.", registry=r)
        self.cache_misses = Counter("mme_cache_misses", "Invocations that had to wait for a load.", registry=r)
        self.loaded_models = Gauge("mme_loaded_models", "Models loaded in the container now.", registry=r)
        self.loads = Counter("mme_model_loads", "Models loaded into the container.", registry=r)
        self.unloads = Counter("mme_model_unloads", "Models unloaded from the container.", registry=r)
        self.evictions = Counter("mme_model_evictions", "Unloads to make room (507 or a budget).", registry=r)
        self.download_seconds = Histogram(
            "mme_model_download_seconds", "Time to download an archive.", buckets=_SECONDS, registry=r
        )
        self.load_seconds = Histogram(
            "mme_model_load_seconds", "Time for the container to load a model.", buckets=_SECONDS, registry=r
        )
        self.unload_seconds = Histogram(
            "mme_model_unload_seconds", "Time for the container to unload a model.", buckets=_SECONDS, registry=r
        )
        self.invocations = Counter("mme_invocations", "Invocations per model.", ["model"], registry=r)
        self.errors = Counter(
            "mme_invocation_errors", "Failed invocations per model and error.", ["model", "error"], registry=r
        )
        self.latency_seconds = Histogram(
            "mme_invocation_latency_seconds", "Invocation latency per model.", ["model"], buckets=_SECONDS, registry=r
        )
