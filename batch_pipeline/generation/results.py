"""From engine results to chunk rows, and from chunks to OpenAI output lines, output/error files and totals."""

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from batch_pipeline.core.layout import ResponsePaths
from batch_pipeline.core.storage import atomic_path
from batch_pipeline.generation.chunks import ChunkStore, ResultRow, block_start
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


_INDEX_COLUMNS = ["row_index", *_TALLY_COLUMNS]
_LINE_COLUMNS = ["custom_id", "line_id", "request_id", "status_code", "body_json"]


def chunk_index(path: Path) -> pa.Table:
    """What choosing and counting a chunk's lines needs."""
    return pq.read_table(path, columns=_INDEX_COLUMNS)


def _kept_positions(indexes: list[pa.Table]) -> list[list[int]]:
    """Per chunk, the positions of the one line each row_index gets: a 200 over an error, else the first.
    One writer per cell makes duplicates impossible; this is the last line of defence should one
    still appear (chunks copied in by hand, a data folder written by an older version)."""
    kept: dict[int, tuple[int, int, bool]] = {}
    for chunk, table in enumerate(indexes):
        rows, statuses = table.column("row_index").to_pylist(), table.column("status_code").to_pylist()
        for position, (row, status) in enumerate(zip(rows, statuses)):
            current = kept.get(row)
            if current is None or (status == 200 and not current[2]):
                kept[row] = (chunk, position, status == 200)
    positions: list[list[int]] = [[] for _ in indexes]
    for chunk, position, _ in kept.values():
        positions[chunk].append(position)
    return [sorted(chunk) for chunk in positions]


def _settled(paths: list[Path], indexes: list[pa.Table]) -> int:
    """How many chunks, in order, a reader of a cell that may still grow can show. A run numbers its chunks
    in the order they land, but Ray actors write their blocks' chunks (named by first row) in any order: a
    block is shown once every row before it is done, so no later chunk sorts before one already shown."""
    done: set[int] = set()
    for table in indexes:
        done.update(table.column("row_index").to_pylist())
    first_missing = next(row for row in range(len(done) + 1) if row not in done)
    return next((number for number, path in enumerate(paths)
                 if (block_start(path) or 0) > first_missing), len(paths))


def _output_line(row: dict) -> BatchOutputLine:
    return BatchOutputLine(id=row["line_id"], custom_id=row["custom_id"], response=ResponseEnvelope(
        status_code=row["status_code"], request_id=row["request_id"], body=json.loads(row["body_json"])))


class CellLines:
    """One snapshot of a cell's chunks as OpenAI output lines: one per row_index, in chunk order, and their
    totals. `growing`: a run may still add chunks, so only those no later chunk can sort before are read;
    the lines of a later snapshot then start with these, and a reader counting lines gets each once.
    `known`: the chunk indexes a reader kept from earlier snapshots (a chunk never changes once written),
    brought up to this one."""

    def __init__(self, store: ChunkStore, growing: bool = False, known: dict[Path, pa.Table] | None = None):
        paths = store.snapshot().paths()
        known = {} if known is None else known
        for gone in set(known) - set(paths):
            del known[gone]
        indexes = [known[path] if path in known else known.setdefault(path, chunk_index(path)) for path in paths]
        shown = _settled(paths, indexes) if growing else len(paths)
        self._paths, indexes = paths[:shown], indexes[:shown]
        self._kept = _kept_positions(indexes)
        self.totals = ResponseTotals()
        for table, kept in zip(indexes, self._kept):
            rows = table.to_pylist()
            for position in kept:
                self.totals.add(rows[position])

    @property
    def count(self) -> int:
        return self.totals.rows

    def lines(self, after: int = 0) -> Iterator[BatchOutputLine]:
        """The lines after the first `after`, reading only the chunks that hold them."""
        seen = 0
        for path, kept in zip(self._paths, self._kept):
            if seen + len(kept) <= after:
                seen += len(kept)
                continue
            rows = pq.read_table(path, columns=_LINE_COLUMNS).to_pylist()
            for position in kept:
                seen += 1
                if seen > after:
                    yield _output_line(rows[position])


def write_output_files(store: ChunkStore, output_path: Path, errors_path: Path,
                       unfinished: Iterable[BatchOutputLine] = ()) -> ResponseTotals:
    """Writes output.jsonl (status 200) and errors.jsonl (the rest, then any `unfinished` lines, e.g.
    requests a batch's expiry left undone) from one snapshot of the chunks, one line per row_index;
    the totals count what was written, `unfinished` lines as failed."""
    cell = CellLines(store)
    totals = cell.totals.model_copy()
    with atomic_path(output_path) as out_temp, atomic_path(errors_path) as err_temp, \
            out_temp.open("w", encoding="utf-8") as out, err_temp.open("w", encoding="utf-8") as err:
        for line in cell.lines():
            (out if line.response.status_code == 200 else err).write(line.model_dump_json() + "\n")
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
