"""`GET /metrics`: the pipeline's series (every batch, however submitted) and the API batches by status."""

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from batch_pipeline.api.models import BatchStatus
from batch_pipeline.api.refresher import Refresher
from batch_pipeline.api.service import ShimService
from batch_pipeline.api.store import ShimStore
from batch_pipeline.core.slots import GpuSlot
from batch_pipeline.monitoring.collector import PipelineCollector
from batch_pipeline.monitoring.families import PREFIX


def api_batch_family(status_counts: dict[str, int]) -> Metric:
    family = GaugeMetricFamily(f"{PREFIX}batches", "Batches created through the API, by status", labels=["status"])
    for status in BatchStatus.__args__:
        family.add_metric([status], status_counts.get(status, 0))
    return family


class _ApiBatches(Collector):
    def __init__(self, store: ShimStore):
        self.store = store

    def collect(self) -> Iterator[Metric]:
        yield api_batch_family(self.store.status_counts())


class _RefreshAge(Collector):
    """For alerting on a stuck refresher, as /health reports it."""

    def __init__(self, refresher: Refresher):
        self.refresher = refresher

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(f"{PREFIX}api_refresh_age_seconds",
                                "Seconds since the API's batch refresher last completed a pass",
                                value=self.refresher.health().age_seconds)


class ShimMetrics:
    def __init__(self, service: ShimService, refresher: Refresher, slots: tuple[GpuSlot, ...]):
        self.registry = CollectorRegistry()
        self.registry.register(_ApiBatches(service.store))
        self.registry.register(_RefreshAge(refresher))
        self.registry.register(PipelineCollector(service.instance, service.layout, slots))

    def render(self) -> bytes:
        return generate_latest(self.registry)
