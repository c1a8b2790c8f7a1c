"""Fabricated model results for comparison and curation tests: chunks written by ChunkStore, and the
`batch_responses` materialization a finished run would have recorded."""

from dagster import AssetMaterialization, DagsterInstance, materialize

from batch_pipeline.core.partitions import DATASETS, MODELS, dataset_model_key
from batch_pipeline.core.resources import PipelineConfig
from batch_pipeline.generation.chunks import ChunkStore, ResultRow
from batch_pipeline.intake.assets import batch_requests
from batch_pipeline_tests.support.batches import write_batch


def validated_dataset(instance: DagsterInstance, pipeline: PipelineConfig, key: str, count: int) -> None:
    instance.add_dynamic_partitions(DATASETS.name, [key])
    write_batch(pipeline.layout.dataset(key).input, count)
    assert materialize([batch_requests], partition_key=key, instance=instance, resources={"pipeline": pipeline}).success


def result(index: int, text: str | None, tokens: int = 0, finish_reason: str = "stop", prompt_tokens: int = 10) -> ResultRow:
    ids = {"row_index": index, "custom_id": f"req-{index:05d}", "line_id": f"l{index}", "request_id": f"r{index}"}
    if text is None:
        return ResultRow(**ids, status_code=400, body_json="{}", prompt_tokens=0, error_code="invalid_value",
                         error_message="bad request")
    return ResultRow(**ids, status_code=200, body_json="{}", text=text, finish_reason=finish_reason,
                     prompt_tokens=prompt_tokens, completion_tokens=tokens, latency_s=0.1)


def finished_model(instance: DagsterInstance, pipeline: PipelineConfig, key: str, model: str, rows: list[ResultRow],
                   tokens_per_s: float = 100.0, generation_seconds: float = 2.0, engine_start_seconds: float = 5.0) -> None:
    """As if `batch_responses[key|model]` had run: its chunks on disk and its materialization."""
    if not instance.has_dynamic_partition(MODELS.name, model):
        instance.add_dynamic_partitions(MODELS.name, [model])
    store = ChunkStore(pipeline.layout.responses(key, model).chunks)
    store.prepare()
    store.write(store.next_number(), rows)
    instance.report_runless_asset_event(AssetMaterialization(
        "batch_responses", partition=str(dataset_model_key(key, model)),
        metadata={"generated_tokens_per_s": tokens_per_s, "generation_seconds": generation_seconds,
                  "engine_start_seconds": engine_start_seconds}))
