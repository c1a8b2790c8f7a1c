"""The partitions every concern shares: datasets, models, and their grid (one cell per dataset x model)."""

from dagster import DynamicPartitionsDefinition, MultiPartitionKey, MultiPartitionsDefinition

DATASETS = DynamicPartitionsDefinition(name="datasets")
MODELS = DynamicPartitionsDefinition(name="models")
DATASET_MODELS = MultiPartitionsDefinition({"dataset": DATASETS, "model": MODELS})


def dataset_model_key(dataset: str, model: str) -> MultiPartitionKey:
    return MultiPartitionKey({"dataset": dataset, "model": model})


def cell_of(partition_key: str) -> tuple[str, str] | None:
    """(dataset, model) of a grid cell's key, or None for a key of another partitioning."""
    if "|" not in partition_key:
        return None
    keys = DATASET_MODELS.get_partition_key_from_str(partition_key).keys_by_dimension
    return keys["dataset"], keys["model"]
