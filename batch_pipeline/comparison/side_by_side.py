"""Every finished model's answer to each request in one table: one row per request, in input order."""

import json
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa

from batch_pipeline.comparison.prompts import prompt_text, request_messages
from batch_pipeline.generation.chunks import ChunkStore
from batch_pipeline.intake.requests_table import iter_requests

ANSWER_COLUMNS = ["custom_id", "status_code", "text", "finish_reason", "prompt_tokens", "completion_tokens",
                  "error_message", "embedding"]
# Per model, in this order; model names cannot contain ':', so `field:model` is unambiguous.
_MODEL_FIELDS = [("output", pa.string()), ("completion_tokens", pa.int64()), ("finish_reason", pa.string()),
                 ("error", pa.string()), ("embedding", pa.list_(pa.float32()))]
_BASE_FIELDS = [("custom_id", pa.string()), ("prompt", pa.string()), ("messages_json", pa.string())]

Answers = dict[str, dict]  # custom_id -> chunk row


def column(field: str, model: str) -> str:
    return f"{field}:{model}"


def models_in(column_names: Iterable[str]) -> list[str]:
    """The models a side-by-side table (or an export made from one) holds answers of."""
    return [name.split(":", 1)[1] for name in column_names if name.startswith("output:")]


def load_answers(store: ChunkStore) -> Answers:
    return {row["custom_id"]: row for row in store.iter_rows(ANSWER_COLUMNS)}


def _model_cells(row: dict | None) -> tuple:
    if row is None:
        return None, None, None, None, None
    if row["status_code"] == 200:
        return row["text"], row["completion_tokens"], row["finish_reason"], None, row["embedding"]
    return None, None, None, row["error_message"], None


def side_by_side_schema(models: list[str]) -> pa.Schema:
    return pa.schema(_BASE_FIELDS + [(column(field, model), kind) for model in models for field, kind in _MODEL_FIELDS])


def side_by_side(requests_path: Path, answers: dict[str, Answers]) -> pa.Table:
    """Requests without a row for a model (never generated) get empty cells for it."""
    schema = side_by_side_schema(list(answers))
    columns: dict[str, list] = {name: [] for name in schema.names}
    for request in iter_requests(requests_path):
        messages = request_messages(request)
        columns["custom_id"].append(request.custom_id)
        columns["prompt"].append(prompt_text(messages))
        columns["messages_json"].append(json.dumps(messages, ensure_ascii=False))
        for model, by_id in answers.items():
            for (field, _), value in zip(_MODEL_FIELDS, _model_cells(by_id.get(request.custom_id))):
                columns[column(field, model)].append(value)
    return pa.table(columns, schema=schema)
