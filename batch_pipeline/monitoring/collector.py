"""Every pipeline series at scrape time: finished batches, the GPU queue, and each slot's warm engine host."""

import threading
from collections.abc import Iterator

from dagster import DagsterInstance
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.slots import GpuSlot
from batch_pipeline.monitoring import engine_server
from batch_pipeline.monitoring.families import engine_server_families, queue_families, result_families
from batch_pipeline.monitoring.queue_state import queue_state
from batch_pipeline.monitoring.results import ResultsTally


class PipelineCollector(Collector):
    def __init__(self, instance: DagsterInstance, layout: DataLayout, slots: tuple[GpuSlot, ...]):
        self.instance, self.layout, self.slots = instance, layout, slots
        self.tally = ResultsTally()
        self._lock = threading.Lock()  # one scrape at a time reads and extends the tally

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            self.tally.catch_up(self.instance)
            families = list(result_families(self.tally))
        yield from families
        yield from queue_families(queue_state(self.instance, self.layout))
        hosts = engine_server.running_hosts(self.layout, self.slots)
        yield from engine_server_families(hosts)
        yield from engine_server.merged_vllm_families(hosts)
