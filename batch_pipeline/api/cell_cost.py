"""A finished batch's cost, as its cell's latest `batch_responses` materialization recorded it."""

from collections.abc import Mapping
from typing import Any

from dagster import AssetRecordsFilter, DagsterInstance

from batch_pipeline.core.costs import BatchCost
from batch_pipeline.core.names import RESPONSES_ASSET
from batch_pipeline.core.partitions import dataset_model_key


def _value(metadata: Mapping[str, Any], key: str) -> Any:
    entry = metadata.get(key)
    return getattr(entry, "value", entry)


def cell_cost(instance: DagsterInstance, dataset: str, model: str) -> BatchCost | None:
    """None when the cell has no materialization with cost figures (e.g. no price table could be read)."""
    records = instance.fetch_materializations(AssetRecordsFilter(
        asset_key=RESPONSES_ASSET, asset_partitions=[dataset_model_key(dataset, model)]), limit=1).records
    if not records:
        return None
    metadata = records[0].asset_materialization.metadata
    if _value(metadata, "gpu_seconds") is None:
        return None
    return BatchCost(gpu_seconds=_value(metadata, "gpu_seconds"),
                     gpu_seconds_per_million_tokens=_value(metadata, "gpu_seconds_per_million_tokens"),
                     hosted_cost_usd=_value(metadata, "hosted_cost_usd") or {},
                     prices_as_of=_value(metadata, "hosted_prices_as_of") or "")
