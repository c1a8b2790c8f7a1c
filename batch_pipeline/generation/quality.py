"""What a cell's answers are worth before anyone builds on them: the figures behind its asset checks.

Pure: request bodies and chunk rows in, a report out. The report is kept beside the answers
(`quality.json`), so curation can refuse a cell whose blocking check failed whatever ran it.
"""

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel
from referencing.exceptions import Unresolvable

from batch_pipeline.core.storage import atomic_path
from batch_pipeline.generation.chunks import ChunkStore
from batch_pipeline.intake.requests_table import iter_requests
from batch_pipeline.intake.validation import RequestRow

_EXAMPLES = 5
_ROW_COLUMNS = ["row_index", "custom_id", "status_code", "text", "finish_reason", "embedding"]


class QualityRule(NamedTuple):
    """A check fails above `max_share`; a blocking one makes curation refuse the cell."""

    name: str
    description: str
    max_share: float
    blocking: bool


TRUNCATED = QualityRule("answers_not_truncated", "at most 10% of answers cut by max_tokens", 0.10, False)
REFUSED = QualityRule("requests_not_refused", "at most 5% of requests refused (400 lines)", 0.05, False)
EMPTY = QualityRule("answers_not_empty", "at most 1% of answers empty (an embedding: all zeros or not finite)",
                    0.01, True)
STRUCTURED = QualityRule("structured_answers_valid",
                         "every finished answer to a JSON request parses and meets its schema", 0.0, True)
RULES = (TRUNCATED, REFUSED, EMPTY, STRUCTURED)


class QualityCheck(BaseModel):
    name: str
    passed: bool
    blocking: bool
    description: str
    share: float
    count: int
    of: int
    examples: list[str] = []


class QualityReport(BaseModel):
    checks: list[QualityCheck]

    @property
    def blocking_failures(self) -> list[QualityCheck]:
        return [check for check in self.checks if check.blocking and not check.passed]


def json_expectation(body_json: str) -> dict[str, Any] | None:
    """The schema a request's answer must meet (any object for JSON mode), or None for free text.
    Chat asks through `response_format`, the Responses API through `text.format`."""
    body = json.loads(body_json)
    text = body.get("text")
    requested = body.get("response_format") or (text.get("format") if isinstance(text, dict) else None)
    if not isinstance(requested, dict):  # none, or malformed (that request was refused at generation)
        return None
    if requested.get("type") == "json_object":
        return {"type": "object"}
    if requested.get("type") == "json_schema":
        holder = requested.get("json_schema", requested)
        if not isinstance(holder, dict):
            return None
        return holder["schema"] if isinstance(holder.get("schema"), dict) else {"type": "object"}
    return None


def _json_problem(text: str, schema: dict[str, Any]) -> str | None:
    try:
        value = json.loads(text)
    except ValueError as exc:
        return f"not JSON ({exc})"
    try:
        error = next(Draft202012Validator(schema).iter_errors(value), None)
    except (SchemaError, Unresolvable):
        return None  # refused at generation; nothing was answered against it
    return f"breaks its schema: {error.message}" if error is not None else None


def _check(rule: QualityRule, hits: list[str], of: int) -> QualityCheck:
    share = len(hits) / of if of else 0.0
    return QualityCheck(name=rule.name, description=rule.description, passed=share <= rule.max_share,
                        blocking=rule.blocking, share=round(share, 4), count=len(hits), of=of,
                        examples=hits[:_EXAMPLES])


def assess(expectations: dict[int, dict[str, Any]], rows: Iterable[dict]) -> QualityReport:
    """`expectations`: row index -> JSON schema for the rows that asked for JSON; `rows`: chunk rows
    with row_index, custom_id, status_code, text, finish_reason and (for embeddings) embedding."""
    total = 0
    answered, truncated, refused, empty, structured, broken = [], [], [], [], [], []
    for row in rows:
        total += 1
        custom_id = row["custom_id"]
        if row["status_code"] != 200:
            refused.append(custom_id)
            continue
        answered.append(custom_id)
        if (vector := row.get("embedding")) is not None:
            if not any(vector) or not all(math.isfinite(value) for value in vector):
                empty.append(custom_id)
            continue
        text = row["text"] or ""
        if row["finish_reason"] == "length":
            truncated.append(custom_id)
        if not text.strip():
            empty.append(custom_id)
        schema = expectations.get(row["row_index"])
        # An answer cut by max_tokens is counted as truncated, not as broken JSON.
        if schema is not None and row["finish_reason"] != "length":
            structured.append(custom_id)
            if (problem := _json_problem(text, schema)) is not None:
                broken.append(f"{custom_id}: {problem}")
    return QualityReport(checks=[_check(TRUNCATED, truncated, len(answered)), _check(REFUSED, refused, total),
                                 _check(EMPTY, empty, len(answered)), _check(STRUCTURED, broken, len(structured))])


def _expectations(requests: Iterable[RequestRow]) -> dict[int, dict[str, Any]]:
    return {row.row_index: schema for row in requests
            if '"json_' in row.body_json and (schema := json_expectation(row.body_json)) is not None}


def assess_cell(requests_path: Path, store: ChunkStore, report_path: Path) -> QualityReport:
    """Assesses a finished cell and keeps the report beside its answers."""
    report = assess(_expectations(iter_requests(requests_path)), store.iter_rows(_ROW_COLUMNS))
    with atomic_path(report_path) as temp:
        temp.write_text(report.model_dump_json(indent=2))
    return report


def read_quality(report_path: Path) -> QualityReport | None:
    return QualityReport.model_validate_json(report_path.read_text()) if report_path.exists() else None
