"""`batch_requests[dataset]`: the dataset's validated requests, and the job that ingests a new file."""

from dagster import AssetExecutionContext, Failure, MaterializeResult, MetadataValue, asset, define_asset_job

from batch_pipeline.core.layout import DatasetPaths
from batch_pipeline.core.names import INGEST_JOB, REQUESTS_ASSET
from batch_pipeline.core.partitions import DATASETS
from batch_pipeline.core.registry import RegistryError
from batch_pipeline.core.resources import PipelineConfig
from batch_pipeline.core.storage import write_json_atomic
from batch_pipeline.intake.ingest import InputChanged, ingest


def requests_metadata(paths: DatasetPaths, model: str, rows: int, content_sha256: str | None = None) -> dict:
    """What every `batch_requests` materialization records, however made; the responses sensor reads `model`.
    The input's hash is known where it was just validated, not where a materialization is recorded from disk."""
    hashed = {"input_sha256": content_sha256} if content_sha256 is not None else {}
    return {"model": model, "rows": rows, "input_bytes": paths.input.stat().st_size,
            "requests_path": MetadataValue.path(str(paths.requests)), **hashed}


@asset(key=REQUESTS_ASSET, partitions_def=DATASETS, group_name="batches", kinds={"parquet"})
def batch_requests(context: AssetExecutionContext, pipeline: PipelineConfig) -> MaterializeResult:
    """The dataset's requests, validated line by line against the OpenAI batch input format."""
    paths = pipeline.layout.dataset(context.partition_key)
    if not paths.input.exists():
        raise Failure(f"dataset {context.partition_key}: input file {paths.input} is missing")
    try:
        ingested = ingest(pipeline.layout, context.partition_key, pipeline.registry(), pipeline.limits)
    except InputChanged as exc:
        raise Failure(description=str(exc), metadata={"input_sha256": exc.content_sha256}) from None
    except RegistryError as exc:
        raise Failure(str(exc)) from None
    report = ingested.report
    write_json_atomic(paths.validation, report.model_dump())
    if not report.ok:
        for error in report.errors[:20]:
            context.log.error(f"line {error.line}: [{error.code}] {error.message}")
        raise Failure(
            description=report.summary(),
            metadata={"errors": report.error_count, "validation_report": str(paths.validation)},
        )
    return MaterializeResult(metadata=requests_metadata(paths, report.model, ingested.rows, ingested.content_sha256))


ingest_job = define_asset_job(INGEST_JOB, selection=[batch_requests])
