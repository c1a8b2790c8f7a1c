"""Runs a dataset's remaining requests through an engine, checkpointing every `chunk_size` results, or
sooner when the oldest unsaved result has waited `chunk_seconds` (a slow first wave still lands early)."""

import json
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from batch_pipeline.generation.chunks import ChunkStore, ResultRow, ResumePoint
from batch_pipeline.generation.engine.interface import StreamingEngine
from batch_pipeline.generation.results import result_row
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
    completion_tokens_generated: int = 0
    seconds: float = 0.0
    stopped: bool = False

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens_generated / self.seconds if self.seconds else 0.0


def generate_responses(
    requests_path: Path,
    store: ChunkStore,
    resume: ResumePoint,
    engine: StreamingEngine,
    model: str,
    chunk_size: int,
    max_in_flight: int,
    chunk_seconds: float = float("inf"),
    on_chunk: Callable[[ChunkProgress], None] = lambda progress: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> GenerationSummary:
    """Generates the rows `resume` (from `store.prepare()`) lacks; stops early, at a chunk boundary,
    once `should_stop` says so (cancelled or expired batch)."""
    done = resume.done_rows
    total = count_requests(requests_path)
    number = store.next_number()
    requests = (EngineRequest(row.row_index, row.custom_id, json.loads(row.body_json), row.url)
                for row in iter_requests(requests_path, skip=done))
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
    results = engine.stream(requests, max_in_flight) if not stopped else iter(())
    result: EngineResult
    for result in results:
        row = result_row(result, model)
        if not buffer:
            oldest = time.monotonic()
        buffer.append(row)
        generated += 1
        tokens += row.completion_tokens
        if len(buffer) >= chunk_size or time.monotonic() - oldest >= chunk_seconds:
            flush()
            if should_stop():
                stopped = True
                results.close()
                break
    if buffer:
        flush()
    return GenerationSummary(rows_total=total, rows_resumed=len(done), chunks_resumed=resume.chunks,
                             rows_generated=generated,
                             completion_tokens_generated=tokens, seconds=time.monotonic() - started,
                             stopped=stopped)
