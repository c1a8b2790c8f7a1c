"""Sets aside a request that makes the engine itself fail, so one poison line costs a few retries, not the batch.

A failure inside an engine step cannot be pinned on one request: every request in flight is a suspect.
Suspects are kept beside the cell's chunks (the run fails and is retried, with a fresh engine). The
retry runs every other request as usual, then the suspects: together the first time (an engine that
was killed from outside fails nobody twice), then, once they failed together twice, each alone, so a
failure names its request. A request that failed alone twice becomes that line's 400 without
reaching the engine again.
"""

from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ValidationError

from batch_pipeline.core.storage import write_text_atomic
from batch_pipeline.generation.engine.interface import (
    EngineFailure,
    EngineRequest,
    EngineResult,
    StreamingEngine,
    UnsupportedRequest,
)

# A request is run alone after failing this often among others, and set aside after failing alone this often.
FAILURES_TO_ISOLATE = 2
FAILURES_TO_SET_ASIDE = 2


class Suspect(BaseModel):
    shared: int = 0  # engine failures while it was in flight with others
    alone: int = 0  # engine failures while it was the only request in the engine
    last_failure: str = ""


class Suspects(BaseModel):
    rows: dict[int, Suspect] = {}


def read_suspects(path: Path) -> Suspects:
    """None recorded, or a record that cannot be read (it is rebuilt by the next failure)."""
    try:
        return Suspects.model_validate_json(path.read_text())
    except (OSError, ValidationError):
        return Suspects()


def set_aside(request: EngineRequest, suspect: Suspect) -> EngineResult:
    return EngineResult(request=request, error=UnsupportedRequest(
        f"this request made the engine fail each of the {suspect.alone} times it ran alone, so it was set aside "
        f"and the rest of the batch went on (last failure: {suspect.last_failure})", None, code="engine_failure"))


class IsolatingEngine(StreamingEngine):
    """`engine` with the suspects of earlier engine failures (kept at `path`) held back and narrowed down."""

    def __init__(self, engine: StreamingEngine, path: Path):
        self.engine = engine
        self.path = path

    def _record(self, suspects: Suspects, failure: EngineFailure, alone: int | None) -> None:
        # Alone, the request is the suspect even when the engine could not say (a host that stopped answering).
        rows = [alone] if alone is not None else failure.suspects or []
        for row in rows:
            suspect = suspects.rows.setdefault(row, Suspect())
            suspect.last_failure = failure.message
            if alone is not None:
                suspect.alone += 1
            else:
                suspect.shared += 1
        if rows:
            write_text_atomic(self.path, suspects.model_dump_json())

    def _run(self, requests: Iterator[EngineRequest], max_in_flight: int, suspects: Suspects,
             alone: int | None = None) -> Iterator[EngineResult]:
        try:
            yield from self.engine.stream(requests, max_in_flight)
        except EngineFailure as failure:
            self._record(suspects, failure, alone)
            raise

    def stream(self, requests: Iterator[EngineRequest], max_in_flight: int) -> Iterator[EngineResult]:
        suspects = read_suspects(self.path)
        held: list[EngineRequest] = []

        def unsuspected() -> Iterator[EngineRequest]:
            for request in requests:
                if request.row_index in suspects.rows:
                    held.append(request)
                else:
                    yield request

        yield from self._run(unsuspected(), max_in_flight, suspects)
        together = [request for request in held if suspects.rows[request.row_index].shared < FAILURES_TO_ISOLATE]
        if together:
            yield from self._run(iter(together), max_in_flight, suspects)
        for request in held:
            suspect = suspects.rows[request.row_index]
            if suspect.alone >= FAILURES_TO_SET_ASIDE:
                yield set_aside(request, suspect)
            elif suspect.shared >= FAILURES_TO_ISOLATE:
                yield from self._run(iter([request]), 1, suspects, alone=request.row_index)
