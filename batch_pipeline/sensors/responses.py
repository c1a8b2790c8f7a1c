from dagster import (
    AssetKey,
    DefaultSensorStatus,
    JobDefinition,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from batch_pipeline.inbox import dataset_source
from batch_pipeline.partitions import MODELS, dataset_model_key
from batch_pipeline.registry import RegistryError
from batch_pipeline.resources import PipelineConfig

_PAGE = 100


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
    the latest one per tick). The run key makes the request idempotent across daemon restarts.
    """

    @sensor(name="responses_sensor", job=responses_job, minimum_interval_seconds=interval_seconds,
            default_status=DefaultSensorStatus.RUNNING)
    def _responses_sensor(context: SensorEvaluationContext, pipeline: PipelineConfig):
        records = context.instance.fetch_materializations(
            AssetKey("batch_requests"), limit=_PAGE, cursor=context.cursor, ascending=True)
        requests, models = [], _registered_names(context, pipeline)
        for record in records.records:
            materialization = record.asset_materialization
            dataset, model_entry = materialization.partition, materialization.metadata.get("model")
            if model_entry is None:  # e.g. a materialization reported by hand in the UI
                context.log.warning(f"batch_requests[{dataset}] has no model metadata; not queued")
                continue
            model = model_entry.value
            models.add(model)
            if dataset_source(pipeline.layout, dataset) == "shim":
                continue  # API batches get their GPU run from the shim sensor, one per batch
            requests.append(RunRequest(run_key=f"{dataset}|{model}",
                                       partition_key=dataset_model_key(dataset, model)))
        missing = sorted(models - set(context.instance.get_dynamic_partitions(MODELS.name)))
        if not requests and not missing:
            return SkipReason("no newly validated datasets")
        return SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[MODELS.build_add_request(missing)] if missing else [],
            cursor=records.cursor if records.records else context.cursor,
        )

    return _responses_sensor
