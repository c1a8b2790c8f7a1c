"""A finished batch's cost, as its cell's latest `batch_responses` materialization recorded it."""


from dagster import AssetRecordsFilter, DagsterInstance

from batch_pipeline.core.costs import BatchCost
from batch_pipeline.core.metadata import metadata_value
from batch_pipeline.core.names import RESPONSES_ASSET
from batch_pipeline.core.partitions import dataset_model_key


def cell_cost(instance: DagsterInstance, dataset: str, model: str) -> BatchCost | None:
    """None when the cell has no materialization with cost figures (e.g. no price table could be read)."""
    records = instance.fetch_materializations(AssetRecordsFilter(
        asset_key=RESPONSES_ASSET, asset_partitions=[dataset_model_key(dataset, model)]), limit=1).records
    if not records:
        return None
    metadata = records[0].asset_materialization.metadata
    if metadata_value(metadata, "gpu_seconds", None) is None:
        return None
    return BatchCost(gpu_seconds=metadata_value(metadata, "gpu_seconds", None),
                     gpu_seconds_per_million_tokens=metadata_value(metadata, "gpu_seconds_per_million_tokens", None),
                     hosted_cost_usd=metadata_value(metadata, "hosted_cost_usd", None) or {},
                     prices_as_of=metadata_value(metadata, "hosted_prices_as_of", None) or "")
