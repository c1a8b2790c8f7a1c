"""Runs a dataset's remaining requests through an engine, checkpointing as its `ChunkPolicy` says."""

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from batch_pipeline.generation.chunks import ChunkPolicy, ChunkStore, ResultRow, ResumePoint
from batch_pipeline.generation.engine.interface import StreamingEngine
from batch_pipeline.generation.feed import prefix_ordered
from batch_pipeline.generation.results import result_row
from batch_pipeline.generation.watchdog import EngineStalled, with_stall_deadline
from batch_pipeline.intake.requests_table import count_requests, iter_requests
from batch_pipeline.protocol.answers import EngineRequest, EngineResult


class ChunkProgress(BaseModel):
    chunk: str
    rows_done: int
    rows_total: int
    tokens_per_s: float
    eta_s: float | None

    def summary(self) -> str:
        """One line a person reads in the run's log and on its progress tag."""
        eta = f"{self.eta_s:.0f}s" if self.eta_s is not None else "unknown"
        return f"{self.rows_done}/{self.rows_total} rows done, {self.tokens_per_s:.0f} generated tokens/s, ETA {eta}"


class GenerationSummary(BaseModel):
    rows_total: int
    rows_resumed: int
    chunks_resumed: int
    rows_generated: int = 0
    rows_deduplicated: int = 0
    rows_from_result_cache: int = 0
    completion_tokens_generated: int = 0
    seconds: float = 0.0
    stopped: bool = False

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens_generated / self.seconds if self.seconds else 0.0

    def followed_by(self, later: "GenerationSummary") -> "GenerationSummary":
        """This pass and a `later` one over the same cell as one run (the result cache's pass, then the
        engine's): what this one found on disk, what both did."""
        added = {field: getattr(self, field) + getattr(later, field)
                 for field in ("rows_generated", "rows_deduplicated", "rows_from_result_cache",
                               "completion_tokens_generated", "seconds")}
        return self.model_copy(update={**added, "stopped": later.stopped})


def generate_responses(
    requests_path: Path,
    store: ChunkStore,
    resume: ResumePoint,
    engine: StreamingEngine,
    model: str,
    policy: ChunkPolicy,
    max_in_flight: int,
    order_window: int | None = None,
    on_chunk: Callable[[ChunkProgress], None] = lambda progress: None,
    should_stop: Callable[[], bool] = lambda: False,
    stall_seconds: float | None = None,
) -> GenerationSummary:
    """Generates the rows `resume` (from `store.prepare()`, taken under the cell's lock) lacks; stops
    early, at a chunk boundary, once `should_stop` says so (cancelled or expired batch); raises
    EngineStalled when the engine returns nothing for `stall_seconds` (None: no watchdog)."""
    done = resume.done_rows
    total = count_requests(requests_path)
    number = store.next_number()
    requests = prefix_ordered((EngineRequest(row.row_index, row.custom_id, json.loads(row.body_json), row.url)
                               for row in iter_requests(requests_path, skip=done)), order_window)
    started = time.monotonic()
    generated = tokens = 0
    buffer: list[ResultRow] = []
    oldest = 0.0

    def flush() -> None:
        nonlocal number
        path = store.write(number, buffer)
        number += 1
        elapsed = time.monotonic() - started
        rows_done = len(done) + generated
        rate = generated / elapsed if elapsed else 0.0
        on_chunk(ChunkProgress(chunk=path.name, rows_done=rows_done, rows_total=total,
                               tokens_per_s=tokens / elapsed if elapsed else 0.0,
                               eta_s=(total - rows_done) / rate if rate else None))
        buffer.clear()

    stopped = should_stop()
    results = engine.stream(requests, max_in_flight) if not stopped else (result for result in ())
    if stall_seconds is not None:
        results = with_stall_deadline(results, stall_seconds, model, buffer=max_in_flight)
    result: EngineResult
    with contextlib.closing(results):
        try:
            for result in results:
                row = result_row(result, model)
                if not buffer:
                    oldest = time.monotonic()
                buffer.append(row)
                generated += 1
                if result.reused is None:  # generated tokens/s counts what the engine generated
                    tokens += row.completion_tokens
                if policy.due(len(buffer), time.monotonic() - oldest):
                    flush()
                    if should_stop():
                        stopped = True
                        break
        except EngineStalled:
            if buffer:
                flush()  # the answers that did come are kept for the retry
            raise
    if buffer:
        flush()
    return GenerationSummary(rows_total=total, rows_resumed=len(done), chunks_resumed=resume.chunks,
                             rows_generated=generated,
                             completion_tokens_generated=tokens, seconds=time.monotonic() - started,
                             stopped=stopped)
