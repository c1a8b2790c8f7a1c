"""Comparison results as Dagster metadata: tables the UI renders as tables, and the chart inline."""

import base64
import types
import typing

import pyarrow as pa
from dagster import MetadataValue, TableColumn, TableRecord, TableSchema
from pydantic import BaseModel

from batch_pipeline.comparison.side_by_side import column

_TABLE_TYPES = {str: "string", int: "int", float: "float", bool: "bool"}


def _table_type(annotation) -> str:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    return _TABLE_TYPES[annotation]


def records_table(kind: type[BaseModel], rows: list[BaseModel]) -> MetadataValue:
    """A table whose columns are the pydantic model's fields, in order."""
    schema = TableSchema(columns=[TableColumn(name, _table_type(field.annotation))
                                  for name, field in kind.model_fields.items()])
    return MetadataValue.table([TableRecord(row.model_dump()) for row in rows], schema=schema)


def image_markdown(png: bytes, title: str) -> MetadataValue:
    """The UI renders markdown images, data URIs included, so the chart needs no file server."""
    return MetadataValue.md(f"![{title}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})")


def _cell(value, width: int) -> str:
    return " ".join(str(value).split()).replace("|", "\\|")[:width] if value is not None else ""


def preview_markdown(table: pa.Table, models: list[str], limit: int = 5, width: int = 80) -> str:
    """The first rows side by side; a failed request shows its error in italics."""
    lines = ["| custom_id | " + " | ".join(models) + " |", "|" + " --- |" * (len(models) + 1)]
    for row in table.slice(0, limit).to_pylist():
        cells = [_cell(row[column("output", m)], width) or
                 (f"*{_cell(row[column('error', m)], width)}*" if row[column("error", m)] else "") for m in models]
        lines.append(f"| {_cell(row['custom_id'], width)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
