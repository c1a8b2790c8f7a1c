"""`batch_requests[dataset]`: the dataset's validated requests, and the job that ingests a new file."""

from dagster import AssetExecutionContext, Failure, MaterializeResult, MetadataValue, asset, define_asset_job

from batch_pipeline.core.layout import DatasetPaths, file_sha256
from batch_pipeline.core.names import INGEST_JOB, REQUESTS_ASSET
from batch_pipeline.core.partitions import DATASETS
from batch_pipeline.core.registry import RegistryError
from batch_pipeline.core.resources import PipelineConfig
from batch_pipeline.core.storage import atomic_path, remove_temp_files, write_json_atomic
from batch_pipeline.intake.provenance import input_change
from batch_pipeline.intake.requests_table import write_requests
from batch_pipeline.intake.validation import BatchFileScan


class _InvalidFile(Exception):
    pass


def requests_metadata(paths: DatasetPaths, model: str, rows: int) -> dict:
    """What every `batch_requests` materialization records, however made; the responses sensor reads `model`."""
    return {"model": model, "rows": rows, "input_bytes": paths.input.stat().st_size,
            "requests_path": MetadataValue.path(str(paths.requests))}


@asset(key=REQUESTS_ASSET, partitions_def=DATASETS, group_name="batches", kinds={"parquet"})
def batch_requests(context: AssetExecutionContext, pipeline: PipelineConfig) -> MaterializeResult:
    """The dataset's requests, validated line by line against the OpenAI batch input format."""
    paths = pipeline.layout.dataset(context.partition_key)
    if not paths.input.exists():
        raise Failure(f"dataset {context.partition_key}: input file {paths.input} is missing")
    content_sha256 = file_sha256(paths.input)
    if change := input_change(pipeline.layout, context.partition_key, content_sha256):
        raise Failure(description=change, metadata={"input_sha256": content_sha256})
    remove_temp_files(paths.folder)
    try:
        registry = pipeline.registry()
    except RegistryError as exc:
        raise Failure(str(exc)) from None
    scan = BatchFileScan(paths.input, set(registry.names()), pipeline.limits, registry.embedding_models())
    try:
        with atomic_path(paths.requests) as temp:
            count = write_requests(scan.rows(), temp)
            report = scan.report()
            write_json_atomic(paths.validation, report.model_dump())
            if not report.ok:
                raise _InvalidFile
    except _InvalidFile:
        for error in report.errors[:20]:
            context.log.error(f"line {error.line}: [{error.code}] {error.message}")
        raise Failure(
            description=report.summary(),
            metadata={"errors": report.error_count, "validation_report": str(paths.validation)},
        ) from None
    return MaterializeResult(metadata={**requests_metadata(paths, report.model, count),
                                       "input_sha256": content_sha256})


ingest_job = define_asset_job(INGEST_JOB, selection=[batch_requests])
