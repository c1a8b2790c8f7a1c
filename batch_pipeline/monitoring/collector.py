"""Every pipeline series at scrape time: finished batches, the GPU queue, and the warm engine host."""

import threading
from collections.abc import Iterator

from dagster import DagsterInstance
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from batch_pipeline.core.layout import DataLayout
from batch_pipeline.generation.engine.server_state import ServerFiles
from batch_pipeline.monitoring import engine_server
from batch_pipeline.monitoring.families import engine_server_families, queue_families, result_families
from batch_pipeline.monitoring.queue_state import queue_state
from batch_pipeline.monitoring.results import ResultsTally


class PipelineCollector(Collector):
    def __init__(self, instance: DagsterInstance, layout: DataLayout):
        self.instance, self.layout = instance, layout
        self.tally = ResultsTally()
        self._lock = threading.Lock()  # one scrape at a time reads and extends the tally

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            self.tally.catch_up(self.instance)
            families = list(result_families(self.tally))
        yield from families
        yield from queue_families(queue_state(self.instance, self.layout))
        if (state := engine_server.running_server(ServerFiles(self.layout.engine_server))) is not None:
            vllm = engine_server.scrape(state)
            yield from engine_server_families(state, answered=vllm is not None)
            yield from vllm or ()
