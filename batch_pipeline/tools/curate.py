"""Takes a reviewed export back: checks it, keeps it as the dataset's accepted review, and
materializes `curated_dataset` (the kept rows as Parquet and as a chat fine-tuning JSONL).

    batch-pipeline curate --dataset KEY --reviewed FILE.parquet|FILE.csv

Start from data/datasets/KEY/review/export.parquet (or export.csv) and fill in chosen_model,
rating (1-5), keep (true/false) and notes; edit the chosen answer's cell to correct it. Nothing is
written unless every row is valid; each problem is printed as `row N, column C: ...`.
"""

from pathlib import Path

from dagster import DagsterInstance, materialize

from batch_pipeline.core.partitions import DATASETS
from batch_pipeline.core.resources import PipelineConfig
from batch_pipeline.core.storage import write_parquet_atomic
from batch_pipeline.curation.assets import curated_dataset
from batch_pipeline.curation.review import parse_review, read_review_file, review_table
from batch_pipeline.intake.requests_table import iter_requests
from batch_pipeline.tools.cli import ToolError, require_validated_dataset

_QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def accept_review(pipeline: PipelineConfig, dataset: str, reviewed: Path) -> int:
    """Stores the review in the dataset's review folder, typed; returns its row count."""
    require_validated_dataset(pipeline.layout, dataset)
    paths = pipeline.layout.dataset(dataset)
    if not reviewed.exists():
        raise ToolError(f"{reviewed}: file not found")
    request_ids = {row.custom_id for row in iter_requests(paths.requests)}
    rows = parse_review(read_review_file(reviewed), request_ids)
    write_parquet_atomic(paths.reviewed, review_table(rows))
    return len(rows)


def curate(instance: DagsterInstance, pipeline: PipelineConfig, dataset: str, reviewed: Path) -> str:
    count = accept_review(pipeline, dataset, reviewed)
    if not instance.has_dynamic_partition(DATASETS.name, dataset):
        instance.add_dynamic_partitions(DATASETS.name, [dataset])
    result = materialize([curated_dataset], partition_key=dataset, instance=instance,
                         resources={"pipeline": pipeline}, run_config=_QUIET_LOGS, raise_on_error=False)
    if not result.success:
        raise ToolError(f"curated_dataset[{dataset}] failed; see run {result.run_id} in the Dagster UI")
    metadata = result.asset_materializations_for_node("curated_dataset")[0].metadata
    paths = pipeline.layout.dataset(dataset)
    return (f"{dataset}: {count} reviewed rows accepted, {metadata['kept'].value} kept -> "
            f"{paths.curated} and {paths.finetune} (run {result.run_id})")
