"""A reviewed export, checked before anything is curated from it: every problem names its row and column.

Rows are numbered from 1 in file order (a spreadsheet shows row N on line N + 1, under the header).
"""

import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from batch_pipeline.comparison.side_by_side import column, models_in
from batch_pipeline.curation.export import REVIEW_FIELDS, export_schema

_SHOWN_PROBLEMS = 50


class ReviewError(ValueError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        more = f"\n... and {len(problems) - _SHOWN_PROBLEMS} more" if len(problems) > _SHOWN_PROBLEMS else ""
        super().__init__("\n".join(problems[:_SHOWN_PROBLEMS]) + more)


class ReviewRow(BaseModel):
    """One reviewed request; `outputs` are the answer cells as the reviewer left them (edits included)."""

    model_config = ConfigDict(extra="forbid")

    custom_id: str = Field(min_length=1)
    prompt: str | None = None
    outputs: dict[str, str | None]
    chosen_model: str | None = None
    rating: int | None = Field(default=None, ge=1, le=5)
    keep: bool | None = None
    notes: str | None = None

    @field_validator("chosen_model")
    @classmethod
    def _one_of_the_models(cls, value: str | None, info: ValidationInfo) -> str | None:
        models = list(info.data.get("outputs", {}))
        if value is not None and value not in models:
            raise PydanticCustomError("unknown_model", "{value} is not one of the models in this export: {models}",
                                      {"value": repr(value), "models": ", ".join(models)})
        return value

    @property
    def kept(self) -> bool:
        return bool(self.keep)

    @property
    def answer(self) -> str | None:
        return self.outputs.get(self.chosen_model) if self.chosen_model else None


def _blank_to_none(value: Any) -> Any:
    """Spreadsheets and pandas spell "empty" as "", whitespace or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str) and not value.strip():
        return None
    return value


def read_review_file(path: Path) -> list[dict[str, Any]]:
    """Parquet as exported, or CSV (every cell read as text, so IDs like 007 stay intact)."""
    try:
        if path.suffix == ".parquet":
            return pq.read_table(path).to_pylist()
        if path.suffix == ".csv":
            import pandas as pd  # here, not above: it adds ~0.3 s to the start of every run worker

            return pd.read_csv(path, dtype=str, keep_default_na=False).to_dict("records")
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise ReviewError([f"{path}: cannot be read: {exc}"]) from None
    raise ReviewError([f"{path}: must be a .parquet or .csv file"])


def _row_problems(number: int, error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors():
        loc = item["loc"]
        name = column("output", str(loc[1])) if loc[0] == "outputs" and len(loc) > 1 else str(loc[0])
        problems.append(f"row {number}, column {name}: {item['msg']}")
    return problems


def parse_review(records: list[dict[str, Any]], request_ids: set[str]) -> list[ReviewRow]:
    """Raises ReviewError listing every problem; `request_ids` are the dataset's custom_ids."""
    names = list(records[0]) if records else []
    models = models_in(names)
    missing = [name for name in ["custom_id", *(n for n, _ in REVIEW_FIELDS)] if name not in names]
    if missing or not models:
        wanted = missing + ([] if models else ["output:<model>"])
        raise ReviewError([f"column {name} is missing (start from the export file)" for name in wanted]
                          if records else ["the file has no rows"])
    rows, problems, first_seen = [], [], {}
    for number, record in enumerate(records, start=1):
        cells = {name: _blank_to_none(value) for name, value in record.items()}
        try:
            row = ReviewRow.model_validate({
                "custom_id": cells["custom_id"], "prompt": cells.get("prompt"),
                "outputs": {model: cells[column("output", model)] for model in models},
                **{name: cells[name] for name, _ in REVIEW_FIELDS}})
        except ValidationError as exc:
            problems += _row_problems(number, exc)
            continue
        if row.custom_id not in request_ids:
            problems.append(f"row {number}, column custom_id: {row.custom_id!r} is not a request of this dataset")
        elif row.custom_id in first_seen:
            problems.append(f"row {number}, column custom_id: {row.custom_id!r} already appears on row "
                            f"{first_seen[row.custom_id]}")
        first_seen.setdefault(row.custom_id, number)
        if row.kept and row.chosen_model is None:
            problems.append(f"row {number}, column chosen_model: keep is true, so choose the model "
                            "whose answer to keep")
        elif row.kept and row.answer is None:
            problems.append(f"row {number}, column {column('output', row.chosen_model)}: empty, so there is no "
                            "answer to keep (that model failed this request)")
        rows.append(row)
    if problems:
        raise ReviewError(problems)
    return rows


def review_table(rows: list[ReviewRow]) -> pa.Table:
    """The accepted review in the export's layout, typed, whatever format the reviewer used."""
    models = list(rows[0].outputs) if rows else []
    schema = export_schema(models)
    records = [{"custom_id": row.custom_id, "prompt": row.prompt,
                **{column("output", model): text for model, text in row.outputs.items()},
                **{name: getattr(row, name) for name, _ in REVIEW_FIELDS}} for row in rows]
    return pa.Table.from_pylist(records, schema=schema)
