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

from batch_pipeline.partitions import MODELS, dataset_model_key

_PAGE = 100


def build_responses_sensor(responses_job: JobDefinition, interval_seconds: int) -> SensorDefinition:
    """Queues the GPU run for each newly validated dataset, on the model its file names.

    Reads every `batch_requests` materialization after its cursor (an asset sensor would only see
    the latest one per tick). The run key makes the request idempotent across daemon restarts.
    """

    @sensor(name="responses_sensor", job=responses_job, minimum_interval_seconds=interval_seconds,
            default_status=DefaultSensorStatus.RUNNING)
    def _responses_sensor(context: SensorEvaluationContext):
        records = context.instance.fetch_materializations(
            AssetKey("batch_requests"), limit=_PAGE, cursor=context.cursor, ascending=True)
        if not records.records:
            return SkipReason("no newly validated datasets")
        requests, models = [], set()
        for record in records.records:
            materialization = record.asset_materialization
            model = materialization.metadata["model"].value
            dataset = materialization.partition
            models.add(model)
            requests.append(RunRequest(run_key=f"{dataset}|{model}",
                                       partition_key=dataset_model_key(dataset, model)))
        missing = sorted(m for m in models if not context.instance.has_dynamic_partition(MODELS.name, m))
        return SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[MODELS.build_add_request(missing)] if missing else [],
            cursor=records.cursor,
        )

    return _responses_sensor
