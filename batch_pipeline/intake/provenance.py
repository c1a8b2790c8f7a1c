"""source.json: who accepted a dataset's input and what its bytes hashed to, so a later change is caught."""

from pydantic import BaseModel

from batch_pipeline.core.layout import DataLayout, key_hash


class DatasetSource(BaseModel):
    """Written once, when the inbox or the API shim's placement accepts the input."""

    source: str = "inbox"  # "inbox" or "shim"
    file_name: str | None = None
    bytes: int | None = None
    accepted_at: float | None = None
    # Of the whole input; records written before it was kept, and the shim's, lack it.
    sha256: str | None = None
    batch_id: str | None = None


_TO_RUN_IT_AS_IT_IS_NOW = {
    "inbox": "drop the file into the inbox again under a new name",
    "shim": "upload the file again and create a new batch",
}


def read_source(layout: DataLayout, dataset: str) -> DatasetSource | None:
    path = layout.dataset(dataset).source
    return DatasetSource.model_validate_json(path.read_text()) if path.exists() else None


def dataset_source(layout: DataLayout, dataset: str) -> str:
    """`inbox` or `shim`: who accepted the dataset's input."""
    record = read_source(layout, dataset)
    return record.source if record else "inbox"


def input_change(layout: DataLayout, dataset: str, content_sha256: str) -> str | None:
    """Why the input is no longer the file that was accepted, or None while it still is (or nothing was
    recorded to tell: a dataset folder made by hand)."""
    record = read_source(layout, dataset)
    if record is None:
        return None
    if record.sha256 is not None and record.sha256 != content_sha256:
        expected = f"sha256 {record.sha256} (recorded in source.json)"
    # A shim key may mix the batch id into its hash; an inbox key holds the content's.
    elif record.source == "inbox" and not content_sha256.startswith(key_hash(dataset)):
        expected = f"a sha256 starting {key_hash(dataset)} (the dataset key)"
    else:
        return None
    to_do = _TO_RUN_IT_AS_IT_IS_NOW.get(record.source, _TO_RUN_IT_AS_IT_IS_NOW["inbox"])
    return (f"{layout.dataset(dataset).input} changed after it was accepted: expected {expected}, "
            f"found sha256 {content_sha256}. An accepted input must never change, so it was not validated; "
            f"to run the file as it is now, {to_do}.")
