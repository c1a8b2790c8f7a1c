from dagster import (
    DefaultSensorStatus,
    JobDefinition,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from batch_pipeline.core.names import REQUESTS_ASSET, RESPONSES_SENSOR
from batch_pipeline.core.partitions import MODELS, dataset_model_key
from batch_pipeline.core.registry import RegistryError
from batch_pipeline.core.resources import PipelineConfig
from batch_pipeline.intake.inbox import dataset_source

_PAGE = 100
_PAGES_PER_TICK = 10


def _registered_names(context: SensorEvaluationContext, pipeline: PipelineConfig) -> set[str]:
    try:
        return set(pipeline.registry().models)
    except RegistryError as exc:
        context.log.error(str(exc))
        return set()


def build_responses_sensor(responses_job: JobDefinition, interval_seconds: int) -> SensorDefinition:
    """Queues the GPU run for each newly validated inbox dataset, on the model its file names, and keeps
    the `models` partitions in step with the registry (each entry is a column of the grid).

    Reads every `batch_requests` materialization after its cursor (an asset sensor would only see
    the latest one per tick), and moves the cursor past every record it read, queued or skipped.
    The run key makes the request idempotent across daemon restarts.
    """

    @sensor(name=RESPONSES_SENSOR, job=responses_job, minimum_interval_seconds=interval_seconds,
            default_status=DefaultSensorStatus.RUNNING)
    def _responses_sensor(context: SensorEvaluationContext, pipeline: PipelineConfig):
        requests, models, cursor = [], _registered_names(context, pipeline), context.cursor
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
                models.add(model_entry.value)
                if dataset_source(pipeline.layout, dataset) == "shim":
                    continue  # API batches get their GPU run from the shim sensor, one per batch
                requests.append(RunRequest(run_key=f"{dataset}|{model_entry.value}",
                                           partition_key=dataset_model_key(dataset, model_entry.value)))
            cursor = records.cursor if records.records else cursor
            if not records.has_more:
                break
        missing = sorted(models - set(context.instance.get_dynamic_partitions(MODELS.name)))
        if not requests and not missing:
            context.update_cursor(cursor)  # past every record read, even where none needed a run
            return SkipReason("no newly validated inbox datasets")
        return SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[MODELS.build_add_request(missing)] if missing else [],
            cursor=cursor,
        )

    return _responses_sensor
