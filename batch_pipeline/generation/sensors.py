from dagster import (
    AssetMaterialization,
    AssetRecordsFilter,
    DagsterInstance,
    DefaultSensorStatus,
    JobDefinition,
    MetadataValue,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.names import REQUESTS_ASSET, RESPONSES_ASSET, RESPONSES_SENSOR
from batch_pipeline.core.partitions import dataset_model_key
from batch_pipeline.core.registry import RegistryError
from batch_pipeline.core.resources import PipelineConfig
from batch_pipeline.generation.chunks import ChunkStore
from batch_pipeline.generation.launch import GpuLaunches
from batch_pipeline.generation.results import ResponseTotals, combine, complete_on_disk, tally_chunk
from batch_pipeline.intake.provenance import dataset_source
from batch_pipeline.intake.requests_table import count_requests

_PAGE = 100
_PAGES_PER_TICK = 10


def _registered_names(context: SensorEvaluationContext, pipeline: PipelineConfig) -> set[str]:
    try:
        return set(pipeline.registry().names())
    except RegistryError as exc:
        context.log.error(str(exc))
        return set()


def _finished_on_disk(context: SensorEvaluationContext, layout: DataLayout, dataset: str,
                      model: str) -> ResponseTotals | None:
    """The totals of a cell a run finished, or None: also when a chunk cannot be read, since the run
    moves it aside and generates its rows again."""
    requests, paths = layout.dataset(dataset).requests, layout.responses(dataset, model)
    try:
        if not (requests.exists() and complete_on_disk(paths, count_requests(requests))):
            return None
        return combine(tally_chunk(path) for path in ChunkStore(paths.chunks).paths())
    except Exception as exc:
        context.log.warning(f"{dataset}|{model}: its answers on disk cannot be read ({type(exc).__name__}: {exc}); "
                            "its run generates the unreadable rows again")
        return None


def _is_recorded(instance: DagsterInstance, partition: str) -> bool:
    return bool(instance.fetch_materializations(
        AssetRecordsFilter(asset_key=RESPONSES_ASSET, asset_partitions=[partition]), limit=1).records)


def _responses_from_disk(layout: DataLayout, dataset: str, model: str, totals: ResponseTotals) -> AssetMaterialization:
    paths = layout.responses(dataset, model)
    return AssetMaterialization(asset_key=RESPONSES_ASSET, partition=str(dataset_model_key(dataset, model)), metadata={
        **totals.model_dump(),
        "recorded_from_disk": True,
        "output_file": MetadataValue.path(str(paths.output)),
        "error_file": MetadataValue.path(str(paths.errors)),
    })


def build_responses_sensor(responses_job: JobDefinition, interval_seconds: int) -> SensorDefinition:
    """Queues the GPU run for each newly validated inbox dataset, on the model its file names, and keeps
    the `models` partitions in step with the registry (each entry is a column of the grid).

    Reads every `batch_requests` materialization after its cursor (an asset sensor would only see
    the latest one per tick), and moves the cursor past every record it read, queued or skipped.
    The run key makes the request idempotent across daemon restarts. A cell whose answers are
    already complete on disk (a fresh instance database over an existing data folder) takes no run:
    its materialization is recorded from disk instead, unless the instance already has one.
    """

    @sensor(name=RESPONSES_SENSOR, job=responses_job, minimum_interval_seconds=interval_seconds,
            default_status=DefaultSensorStatus.RUNNING)
    def _responses_sensor(context: SensorEvaluationContext, pipeline: PipelineConfig):
        layout = pipeline.layout
        launches, events = GpuLaunches(context.instance, layout), []
        models, cursor = _registered_names(context, pipeline), context.cursor
        seen: set[str] = set()
        for _ in range(_PAGES_PER_TICK):
            records = context.instance.fetch_materializations(REQUESTS_ASSET, limit=_PAGE, cursor=cursor,
                                                              ascending=True)
            for record in records.records:
                materialization = record.asset_materialization
                dataset, model_entry = materialization.partition, materialization.metadata.get("model")
                if model_entry is None:  # e.g. a materialization reported by hand in the UI
                    context.log.warning(f"{REQUESTS_ASSET.to_user_string()}[{dataset}] has no model metadata; "
                                        "not queued")
                    continue
                model = model_entry.value
                models.add(model)
                partition = dataset_model_key(dataset, model)
                if partition in seen:
                    continue
                seen.add(partition)
                try:  # the cursor moves past every record: one that cannot be handled must not stall the rest
                    if (totals := _finished_on_disk(context, layout, dataset, model)) is not None:
                        if not _is_recorded(context.instance, partition):
                            events.append(_responses_from_disk(layout, dataset, model, totals))
                    elif dataset_source(layout, dataset) != "shim" and launches.wanted(dataset, model):
                        launches.add(dataset, model, run_key=f"{dataset}|{model}")
                except Exception as exc:
                    context.log.error(f"{partition} not queued: {type(exc).__name__}: {exc}; materialize it from "
                                      "the UI once the cause is fixed")
            cursor = records.cursor if records.records else cursor
            if not records.has_more:
                break
        result = launches.result(models, asset_events=events, cursor=cursor)
        if not (result.run_requests or events or result.dynamic_partitions_requests):
            context.update_cursor(cursor)  # past every record read, even where none needed a run
            return SkipReason("no newly validated inbox datasets")
        return result

    return _responses_sensor
