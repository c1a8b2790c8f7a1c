from dagster import DynamicPartitionsDefinition, MultiPartitionKey, MultiPartitionsDefinition

DATASETS = DynamicPartitionsDefinition(name="datasets")
MODELS = DynamicPartitionsDefinition(name="models")
DATASET_MODELS = MultiPartitionsDefinition({"dataset": DATASETS, "model": MODELS})


def dataset_model_key(dataset: str, model: str) -> MultiPartitionKey:
    return MultiPartitionKey({"dataset": dataset, "model": model})
