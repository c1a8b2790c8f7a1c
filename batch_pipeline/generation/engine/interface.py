"""What every engine offers a run: requests stream in, finished results stream out, refusals per request.

Keeping `max_in_flight` requests queued means the engine's scheduler always has a full batch, so
the caller can checkpoint as results arrive without costing throughput. The loop that keeps them
in flight is written here once (`SteppedEngine`); the engine host's client hands over a whole job.
"""

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass

from batch_pipeline.generation.engine.spec import EngineSpec
from batch_pipeline.protocol.answers import Answer, EngineRequest, EngineResult
from batch_pipeline.protocol.errors import UnsupportedRequest


def request_failure(exc: Exception, when: str = "take") -> UnsupportedRequest:
    """What one request set off, outside the checks that name a field (e.g. vLLM's serializer overflowing on
    a value no check foresaw): that line's 400, with the engine's own words."""
    return UnsupportedRequest(f"the engine could not {when} this request: {type(exc).__name__}: {exc}", None,
                              code="invalid_request")


class EngineFailure(RuntimeError):
    """The engine itself failed, not one request: nothing more can be trusted to it. `suspects` are the row
    indexes it held at the time (one of them may be the cause), None when unknown."""

    def __init__(self, message: str, suspects: list[int] | None = None):
        super().__init__(message)
        self.message = message
        self.suspects = suspects


@dataclass(kw_only=True)
class Finished(Answer):
    """What an engine reports for one submitted request, by its ticket."""

    ticket: Hashable


class StreamingEngine(ABC):
    @abstractmethod
    def stream(self, requests: Iterator[EngineRequest], max_in_flight: int) -> Iterator[EngineResult]:
        """Results in completion order; abandoning the iterator aborts what is still in flight."""


class SteppedEngine(StreamingEngine):
    """An engine fed one request at a time: the loop below keeps `max_in_flight` of them queued."""

    @abstractmethod
    def _submit(self, request: EngineRequest) -> Hashable:
        """Hands the request to the engine; returns its ticket. Raises EngineFailure when the engine is
        gone; anything else it raises is this request's 400."""

    @abstractmethod
    def _finished(self) -> Iterable[Finished]:
        """Blocks until at least one submitted request has finished; what it raises fails the engine."""

    @abstractmethod
    def _abort(self, tickets: list[Hashable]) -> None:
        """Drops requests still in the engine when the caller stops reading."""

    def stream(self, requests: Iterator[EngineRequest], max_in_flight: int,
               should_stop: Callable[[], bool] = lambda: False) -> Iterator[EngineResult]:
        """`should_stop` is asked after every engine step: a caller gone away frees the engine within
        a step, not after the next request finishes."""
        in_flight: dict[Hashable, tuple[EngineRequest, float]] = {}
        exhausted = False
        try:
            while True:
                while not exhausted and len(in_flight) < max_in_flight:
                    request = next(requests, None)
                    if request is None:
                        exhausted = True
                        break
                    try:
                        in_flight[self._submit(request)] = (request, time.monotonic())
                    except UnsupportedRequest as refusal:
                        yield EngineResult(request=request, error=refusal)
                    except EngineFailure:
                        raise
                    except Exception as exc:  # e.g. a chat template refusing this request's messages
                        yield EngineResult(request=request, error=request_failure(exc))
                if not in_flight:
                    return
                try:
                    finished = self._finished()
                except Exception as exc:  # a step runs every request in flight: none can be blamed alone
                    message = exc.message if isinstance(exc, EngineFailure) else f"{type(exc).__name__}: {exc}"
                    raise EngineFailure(message, [request.row_index for request, _ in in_flight.values()]) from exc
                if should_stop():
                    return
                for done in finished:
                    request, submitted = in_flight.pop(done.ticket)
                    yield EngineResult(request=request, prompt_tokens=done.prompt_tokens,
                                       cached_tokens=done.cached_tokens, completions=done.completions,
                                       error=done.error,
                                       latency_s=time.monotonic() - submitted)
        finally:
            if in_flight:
                self._abort(list(in_flight))


class LoadedEngine(SteppedEngine):
    """An engine holding a model: what the factory builds and runs keep warm between jobs."""

    spec: EngineSpec
    load_seconds: float

    @abstractmethod
    def use(self, spec: EngineSpec) -> None:
        """Serves `spec` from now on: specs with the same fingerprint (sampling defaults and adapters
        aside) share one engine, so these are set per job."""

    @abstractmethod
    def shutdown(self) -> None:
        """Frees the model's memory and the engine's processes."""
