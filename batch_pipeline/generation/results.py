"""From engine results to chunk rows, and from chunks to OpenAI output/error files and totals."""

import json
from collections.abc import Iterable
from pathlib import Path

import pyarrow.parquet as pq
from pydantic import BaseModel

from batch_pipeline.core.layout import ResponsePaths
from batch_pipeline.core.storage import atomic_path
from batch_pipeline.generation.chunks import ChunkStore, ResultRow
from batch_pipeline.protocol.answers import Completion, EngineResult
from batch_pipeline.protocol.batch import BatchOutputLine, ResponseEnvelope, new_id
from batch_pipeline.protocol.endpoints import ENDPOINTS
from batch_pipeline.protocol.errors import error_body


def _row_text(completion: Completion) -> str:
    """The answer as previews and quality checks read it: any tool calls written out after the text."""
    calls = [f"{call.function.name}({call.function.arguments})" for call in completion.tool_calls or []]
    return "\n".join(part for part in (completion.text, *calls) if part)


# The body's extension field (the official clients' models accept extra fields) naming where a reused
# answer came from: {"batch_pipeline": {"reused": "result_cache"}}.
EXTENSION_FIELD = "batch_pipeline"


def _body_json(body: BaseModel, reused: str | None) -> str:
    if reused is None:
        return body.model_dump_json()
    return json.dumps({**json.loads(body.model_dump_json()), EXTENSION_FIELD: {"reused": reused}},
                      ensure_ascii=False, separators=(",", ":"))


def result_row(result: EngineResult, model: str) -> ResultRow:
    ids = {"row_index": result.request.row_index, "custom_id": result.request.custom_id,
           "line_id": new_id("batch_req_"), "request_id": new_id("req_"), "reused": result.reused}
    if result.error is not None:
        body = error_body(result.error.message, result.error.param, result.error.code)
        return ResultRow(**ids, status_code=400, body_json=_body_json(body, result.reused),
                         error_code=result.error.code, error_message=result.error.message)
    body = ENDPOINTS[result.request.url].answer_body(model, result)
    first = result.completions[0]
    return ResultRow(
        **ids, status_code=200, body_json=_body_json(body, result.reused), prompt_tokens=result.prompt_tokens,
        cached_tokens=result.cached_tokens, completion_tokens=result.completion_tokens, latency_s=result.latency_s,
        **({"embedding": first.embedding} if first.embedding is not None else
           {"text": _row_text(first), "finish_reason": first.finish_reason}),
    )


class ResponseTotals(BaseModel):
    rows: int = 0
    succeeded: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def add(self, row: dict) -> None:
        ok = row["status_code"] == 200
        self.rows += 1
        self.succeeded += ok
        self.failed += not ok
        self.prompt_tokens += row["prompt_tokens"]
        self.completion_tokens += row["completion_tokens"]
        self.cached_tokens += row["cached_tokens"] or 0


_TALLY_COLUMNS = ["status_code", "prompt_tokens", "completion_tokens", "cached_tokens"]


def tally_chunk(path: Path) -> ResponseTotals:
    totals = ResponseTotals()
    for row in pq.read_table(path, columns=_TALLY_COLUMNS).to_pylist():
        totals.add(row)
    return totals


def combine(parts: Iterable[ResponseTotals]) -> ResponseTotals:
    parts = list(parts)
    return ResponseTotals(**{field: sum(getattr(part, field) for part in parts)
                             for field in ResponseTotals.model_fields})


_LINE_COLUMNS = ["custom_id", "line_id", "request_id", "status_code", "body_json"]


def _kept_lines(store: ChunkStore) -> set[tuple[int, int]]:
    """(chunk, position) of the one line each row_index gets: a 200 over an error, else the first.
    One writer per cell makes duplicates impossible; this is the last line of defence should one
    still appear (chunks copied in by hand, a data folder written by an older version)."""
    kept: dict[int, tuple[int, int, bool]] = {}
    for chunk, path in enumerate(store.paths()):
        table = pq.read_table(path, columns=["row_index", "status_code"])
        for position, (row, status) in enumerate(zip(table.column(0).to_pylist(), table.column(1).to_pylist())):
            current = kept.get(row)
            if current is None or (status == 200 and not current[2]):
                kept[row] = (chunk, position, status == 200)
    return {(chunk, position) for chunk, position, _ in kept.values()}


def write_output_files(store: ChunkStore, output_path: Path, errors_path: Path,
                       unfinished: Iterable[BatchOutputLine] = ()) -> ResponseTotals:
    """Writes output.jsonl (status 200) and errors.jsonl (the rest, then any `unfinished` lines, e.g.
    requests a batch's expiry left undone) from one snapshot of the chunks, one line per row_index;
    the totals count what was written, `unfinished` lines as failed."""
    store = store.snapshot()
    kept = _kept_lines(store)
    totals = ResponseTotals()
    with atomic_path(output_path) as out_temp, atomic_path(errors_path) as err_temp, \
            out_temp.open("w", encoding="utf-8") as out, err_temp.open("w", encoding="utf-8") as err:
        for chunk, path in enumerate(store.paths()):
            for position, row in enumerate(pq.read_table(path, columns=_LINE_COLUMNS + _TALLY_COLUMNS[1:]).to_pylist()):
                if (chunk, position) not in kept:
                    continue
                line = BatchOutputLine(
                    id=row["line_id"], custom_id=row["custom_id"],
                    response=ResponseEnvelope(status_code=row["status_code"], request_id=row["request_id"],
                                              body=json.loads(row["body_json"])),
                )
                (out if row["status_code"] == 200 else err).write(line.model_dump_json() + "\n")
                totals.add(row)
        for line in unfinished:
            err.write(line.model_dump_json() + "\n")
            totals.rows += 1
            totals.failed += 1
    return totals


def complete_on_disk(paths: ResponsePaths, rows: int) -> bool:
    """Both answer files written and a chunk row for each of the cell's `rows` requests: finished,
    whatever ran it and whatever the instance database remembers."""
    return paths.output.exists() and paths.errors.exists() and ChunkStore(paths.chunks).covers(rows)


def preview_markdown(store: ChunkStore, limit: int = 5, width: int = 160) -> str:
    lines = ["| custom_id | status | output |", "| --- | --- | --- |"]
    for row in store.iter_rows(["custom_id", "status_code", "text", "error_message", "embedding"]):
        shown = (row["text"] if row["status_code"] == 200 else row["error_message"]) or ""
        if row["embedding"] is not None:
            shown = f"({len(row['embedding'])}-dimensional embedding)"
        shown = " ".join(shown.split()).replace("|", "\\|")
        lines.append(f"| {row['custom_id']} | {row['status_code']} | {shown[:width]} |")
        if len(lines) - 2 >= limit:
            break
    return "\n".join(lines)
