"""Every GPU run the sensors queue is requested here, so the inbox's datasets and the API's batches skip
the same cells: complete on disk, already requested this tick, or with a run queued or running however
it was launched (a second run would only wait for the cell's lock)."""

from dagster import DagsterInstance, RunRecord, RunRequest, SensorResult

from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.names import RESPONSES_ASSET
from batch_pipeline.core.partitions import MODELS, dataset_model_key
from batch_pipeline.core.runs import is_active, latest_run
from batch_pipeline.generation.results import complete_on_disk


def active_run(instance: DagsterInstance, dataset: str, model: str) -> RunRecord | None:
    latest = latest_run(instance, RESPONSES_ASSET, dataset_model_key(dataset, model))
    return latest if is_active(latest) else None


class GpuLaunches:
    """One sensor tick's GPU runs, at most one per cell, and the `models` partitions they need."""

    def __init__(self, instance: DagsterInstance, layout: DataLayout):
        self._instance, self._layout = instance, layout
        self._requests: dict[tuple[str, str], RunRequest] = {}

    def wanted(self, dataset: str, model: str, rows: int | None = None) -> bool:
        """`rows`: the cell's request count, to skip it when complete on disk (None: known not to be)."""
        return ((dataset, model) not in self._requests
                and (rows is None or not complete_on_disk(self._layout.responses(dataset, model), rows))
                and active_run(self._instance, dataset, model) is None)

    def add(self, dataset: str, model: str, run_key: str, tags: dict[str, str] | None = None) -> None:
        self._requests[(dataset, model)] = RunRequest(run_key=run_key, partition_key=dataset_model_key(dataset, model),
                                                      tags=tags or {})

    def result(self, models: set[str], **extra) -> SensorResult:
        """`models`: every model name the tick saw, so each gets its column in the UI even without a run."""
        missing = sorted(models - set(self._instance.get_dynamic_partitions(MODELS.name)))
        return SensorResult(run_requests=list(self._requests.values()),
                            dynamic_partitions_requests=[MODELS.build_add_request(missing)] if missing else [],
                            **extra)

    def __bool__(self) -> bool:
        return bool(self._requests)
