"""Curation: a review sheet made from each comparison, and the training data a finished review yields.

Lineage in the UI: batch_requests -> batch_responses -> model_comparison -> curation_export ->
curated_dataset. The export follows the comparison automatically; `curated_dataset` is
materialized by `batch-pipeline curate` once a reviewer hands a file back.
"""

import pyarrow.parquet as pq
from dagster import AssetExecutionContext, AutomationCondition, Failure, MaterializeResult, MetadataValue, asset

from batch_pipeline.comparison.prompts import request_messages
from batch_pipeline.comparison.side_by_side import models_in
from batch_pipeline.core.names import COMPARISON_ASSET, CURATED_ASSET, CURATION_EXPORT_ASSET
from batch_pipeline.core.partitions import DATASETS
from batch_pipeline.core.resources import PipelineConfig
from batch_pipeline.core.storage import atomic_path, write_parquet_atomic
from batch_pipeline.curation.export import review_export
from batch_pipeline.curation.finetune import curated_examples, write_curated
from batch_pipeline.curation.review import ReviewError, parse_review, read_review_file
from batch_pipeline.generation.quality import read_quality
from batch_pipeline.intake.requests_table import iter_requests


def _refuse_failed_cells(pipeline: PipelineConfig, dataset: str, models: list[str]) -> None:
    """Nobody should curate answers a blocking quality check of batch_responses failed on."""
    failures = [f"{model}: {check.name} failed ({check.count} of {check.of}; e.g. {', '.join(check.examples)})"
                for model in models
                if (report := read_quality(pipeline.layout.responses(dataset, model).quality)) is not None
                for check in report.blocking_failures]
    if failures:
        raise Failure(f"dataset {dataset}: not exported for review, a blocking quality check failed:\n"
                      + "\n".join(failures), allow_retries=False)


@asset(key=CURATION_EXPORT_ASSET, partitions_def=DATASETS, deps=[COMPARISON_ASSET], group_name="curation",
       kinds={"parquet", "csv"},
       automation_condition=AutomationCondition.eager())
def curation_export(context: AssetExecutionContext, pipeline: PipelineConfig) -> MaterializeResult:
    """Each request with every model's answer and empty review columns (chosen_model, rating, keep,
    notes), as Parquet and CSV. Reviews already accepted are filled in again."""
    paths = pipeline.layout.dataset(context.partition_key)
    if not paths.comparison.exists():
        raise Failure(f"dataset {context.partition_key}: no comparison yet (materialize model_comparison first)")
    comparison = pq.read_table(paths.comparison)
    _refuse_failed_cells(pipeline, context.partition_key, models_in(comparison.column_names))
    accepted = pq.read_table(paths.reviewed) if paths.reviewed.exists() else None
    table = review_export(comparison, accepted)
    write_parquet_atomic(paths.review_export, table)
    with atomic_path(paths.review_export_csv) as temp:
        table.to_pandas().to_csv(temp, index=False)
    carried = table.num_rows - table.column("keep").null_count
    return MaterializeResult(metadata={
        "rows": table.num_rows,
        "models": MetadataValue.json(models_in(table.column_names)),
        "reviews_carried_over": carried,
        "export_file": MetadataValue.path(str(paths.review_export)),
        "export_csv": MetadataValue.path(str(paths.review_export_csv)),
    })


@asset(key=CURATED_ASSET, partitions_def=DATASETS, deps=[CURATION_EXPORT_ASSET], group_name="curation",
       kinds={"parquet"})
def curated_dataset(context: AssetExecutionContext, pipeline: PipelineConfig) -> MaterializeResult:
    """The rows a reviewer kept, with the chosen answer, and the same as a chat fine-tuning JSONL."""
    dataset = context.partition_key
    paths = pipeline.layout.dataset(dataset)
    if not paths.reviewed.exists():
        raise Failure(f"dataset {dataset}: no accepted review; run "
                      f"`batch-pipeline curate --dataset {dataset} --reviewed FILE`")
    messages = {row.custom_id: request_messages(row) for row in iter_requests(paths.requests)}
    try:
        rows = parse_review(read_review_file(paths.reviewed), set(messages))
    except ReviewError as exc:
        raise Failure(f"{paths.reviewed}:\n{exc}") from None
    examples = curated_examples(rows, messages)
    write_curated(examples, paths.curated, paths.finetune)
    chosen = {model: sum(e.chosen_model == model for e in examples) for model in rows[0].outputs} if rows else {}
    ratings = [e.rating for e in examples if e.rating is not None]
    return MaterializeResult(metadata={
        "reviewed_rows": len(rows),
        "kept": len(examples),
        "chosen_per_model": MetadataValue.json(chosen),
        "mean_rating_of_kept": round(sum(ratings) / len(ratings), 2) if ratings else None,
        "curated_file": MetadataValue.path(str(paths.curated)),
        "finetune_file": MetadataValue.path(str(paths.finetune)),
    })
