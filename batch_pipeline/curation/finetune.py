"""From an accepted review to training data: the kept rows, and a chat fine-tuning JSONL of them."""

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import BaseModel

from batch_pipeline.core.storage import atomic_path, write_parquet_atomic
from batch_pipeline.curation.review import ReviewRow


class CuratedExample(BaseModel):
    custom_id: str
    chosen_model: str
    rating: int | None
    notes: str | None
    messages: list[dict[str, Any]]
    answer: str

    def finetune_line(self) -> str:
        """OpenAI's chat fine-tuning format: the request's messages, then the chosen answer."""
        return json.dumps({"messages": [*self.messages, {"role": "assistant", "content": self.answer}]},
                          ensure_ascii=False)


def curated_examples(rows: list[ReviewRow], messages: dict[str, list[dict[str, Any]]]) -> list[CuratedExample]:
    """`messages`: custom_id -> the request's messages, taken from the dataset rather than the sheet."""
    return [CuratedExample(custom_id=row.custom_id, chosen_model=row.chosen_model, rating=row.rating,
                           notes=row.notes, messages=messages[row.custom_id], answer=row.answer)
            for row in rows if row.kept]


_SCHEMA = pa.schema([("custom_id", pa.string()), ("chosen_model", pa.string()), ("rating", pa.int64()),
                     ("notes", pa.string()), ("messages_json", pa.string()), ("answer", pa.string())])


def write_curated(examples: list[CuratedExample], parquet_path: Path, jsonl_path: Path) -> None:
    """Each file appears whole or not at all."""
    records = [{**example.model_dump(exclude={"messages"}),
                "messages_json": json.dumps(example.messages, ensure_ascii=False)} for example in examples]
    write_parquet_atomic(parquet_path, pa.Table.from_pylist(records, schema=_SCHEMA))
    with atomic_path(jsonl_path) as temp, temp.open("w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(example.finetune_line() + "\n")
