"""`model_comparison[dataset]`: every finished model's answers side by side, with figures and a chart."""

import warnings

from dagster import (
    AssetDep,
    AssetExecutionContext,
    AssetRecordsFilter,
    AutomationCondition,
    BetaWarning,
    DagsterInstance,
    Failure,
    MaterializeResult,
    MetadataValue,
    MultiToSingleDimensionPartitionMapping,
    asset,
)

from batch_pipeline.comparison.agreement import PairAgreement, pairwise_agreement
from batch_pipeline.comparison.chart import comparison_chart
from batch_pipeline.comparison.metadata import image_markdown, preview_markdown, records_table
from batch_pipeline.comparison.side_by_side import Answers, load_answers, side_by_side
from batch_pipeline.comparison.stats import ModelSummary, RunFigures, summarize
from batch_pipeline.core.names import COMPARISON_ASSET, RESPONSES_ASSET
from batch_pipeline.core.partitions import DATASETS, MODELS, dataset_model_key
from batch_pipeline.core.registry import Price, RegistryError
from batch_pipeline.core.resources import PipelineConfig
from batch_pipeline.core.storage import atomic_path, write_parquet_atomic
from batch_pipeline.generation.chunks import ChunkStore
from batch_pipeline.generation.quality import read_quality

# `eager()` without its "no dependency missing" clause: a dataset is rarely run on every registered
# model, so waiting for all of them would never compare anything. It still waits while one of the
# dataset's models is queued or generating, so an answer set never lands during a comparison and
# goes unseen, and a run of several models is compared once, when the last one finishes.
WHEN_A_MODEL_FINISHES = (
    (AutomationCondition.newly_missing() | AutomationCondition.any_deps_updated()).since_last_handled()
    & AutomationCondition.any_deps_match(~AutomationCondition.missing()).with_label("some model finished")
    & ~AutomationCondition.any_deps_in_progress()
    & ~AutomationCondition.in_progress()
).with_label("eager, over whichever models have finished")

with warnings.catch_warnings():  # beta in Dagster 1.13, and the tools would print the warning
    warnings.simplefilter("ignore", BetaWarning)
    # Each dataset's comparison depends on that dataset's row of the dataset x model grid.
    EVERY_MODEL_OF_THE_DATASET = MultiToSingleDimensionPartitionMapping(partition_dimension_name="dataset")


def finished_models(instance: DagsterInstance, dataset: str) -> dict[str, RunFigures]:
    """Models whose `batch_responses` for this dataset has materialized (a run that failed or was
    stopped has chunks but no materialization), with the figures of their latest run."""
    finished = {}
    for model in sorted(instance.get_dynamic_partitions(MODELS.name)):
        partition = str(dataset_model_key(dataset, model))
        records = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=RESPONSES_ASSET, asset_partitions=[partition]), limit=1).records
        if records:
            finished[model] = RunFigures.from_metadata(records[0].asset_materialization.metadata)
    return finished


def _answer(row: dict) -> str | list[float] | None:
    if row["status_code"] != 200:
        return None
    return row["text"] if row["embedding"] is None else row["embedding"]


def _prices(context: AssetExecutionContext, pipeline: PipelineConfig) -> dict[str, Price | None]:
    try:
        registry = pipeline.registry()
        return {name: registry.entry(name).price for name in registry.names()}
    except RegistryError as exc:
        context.log.warning(f"no hosted-API costs: {exc}")
        return {}


@asset(key=COMPARISON_ASSET, partitions_def=DATASETS, group_name="comparison", kinds={"parquet"},
       deps=[AssetDep(RESPONSES_ASSET, partition_mapping=EVERY_MODEL_OF_THE_DATASET)],
       automation_condition=WHEN_A_MODEL_FINISHES)
def model_comparison(context: AssetExecutionContext, pipeline: PipelineConfig) -> MaterializeResult:
    """Every model that has finished this dataset, side by side: answers, lengths, speed, cost, agreement."""
    dataset, layout = context.partition_key, pipeline.layout
    paths = layout.dataset(dataset)
    answers: dict[str, Answers] = {}
    figures = finished_models(context.instance, dataset)
    for model in figures:
        answers[model] = load_answers(ChunkStore(layout.responses(dataset, model).chunks))
        if not answers[model]:
            context.log.warning(f"{model}: materialized, but its chunks are gone; left out")
            del answers[model]
    if not answers:
        raise Failure(f"dataset {dataset}: no model has finished it yet (materialize batch_responses first)")

    table = side_by_side(paths.requests, answers)
    write_parquet_atomic(paths.comparison, table)
    prices = _prices(context, pipeline)
    summaries = [summarize(model, rows.values(), figures[model], prices.get(model),
                           read_quality(layout.responses(dataset, model).quality)) for model, rows in answers.items()]
    pairs = pairwise_agreement({model: {cid: _answer(row) for cid, row in rows.items()}
                                for model, rows in answers.items()})
    lengths = {model: [row["completion_tokens"] for row in rows.values() if row["status_code"] == 200]
               for model, rows in answers.items()}
    png = comparison_chart(lengths, summaries)
    with atomic_path(paths.comparison_chart) as temp:
        temp.write_bytes(png)
    context.log.info(f"compared {len(answers)} model(s) on {table.num_rows} requests: {', '.join(answers)}")
    return MaterializeResult(metadata={
        "models": MetadataValue.json(list(answers)),
        "rows": table.num_rows,
        "summary": records_table(ModelSummary, summaries),
        "agreement": records_table(PairAgreement, pairs),
        "chart": image_markdown(png, f"{dataset}: answer lengths and throughput"),
        "preview": MetadataValue.md(preview_markdown(table, list(answers))),
        "comparison_file": MetadataValue.path(str(paths.comparison)),
        "chart_file": MetadataValue.path(str(paths.comparison_chart)),
    })
