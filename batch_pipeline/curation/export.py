"""The review sheet: each request, every model's answer, and the columns a reviewer fills in."""

import pyarrow as pa

from batch_pipeline.comparison.side_by_side import column, models_in

REVIEW_FIELDS = [("chosen_model", pa.string()), ("rating", pa.int64()), ("keep", pa.bool_()), ("notes", pa.string())]


def export_schema(models: list[str]) -> pa.Schema:
    """Shared by the export and the accepted review, so a review can be exported again."""
    return pa.schema([("custom_id", pa.string()), ("prompt", pa.string())]
                     + [(column("output", model), pa.string()) for model in models] + REVIEW_FIELDS)


def review_export(comparison: pa.Table, accepted_review: pa.Table | None = None) -> pa.Table:
    """The export is rebuilt whenever another model finishes; reviews already accepted for a
    request are carried over, so that work is never lost to a new column."""
    models = models_in(comparison.column_names)
    schema = export_schema(models)
    reviews: dict[str, dict] = {}
    if accepted_review is not None:
        fields = ["custom_id"] + [name for name, _ in REVIEW_FIELDS]
        reviews = {row["custom_id"]: row for row in accepted_review.select(fields).to_pylist()}
    columns = {name: comparison.column(name).to_pylist() for name in schema.names[:2 + len(models)]}
    for name, _ in REVIEW_FIELDS:
        columns[name] = [reviews.get(custom_id, {}).get(name) for custom_id in columns["custom_id"]]
    return pa.table(columns, schema=schema)
