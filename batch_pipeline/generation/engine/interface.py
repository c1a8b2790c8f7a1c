"""What every engine offers a run: requests stream in, finished results stream out, refusals per request.

Keeping `max_in_flight` requests queued means the engine's scheduler always has a full batch, so
the caller can checkpoint as results arrive without costing throughput. The loop that keeps them
in flight is written here once (`SteppedEngine`); the engine host's client hands over a whole job.
"""

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from batch_pipeline.intake.openai_format import CHAT_COMPLETIONS_URL, ToolCall


class UnsupportedRequest(ValueError):
    """One request the engine cannot run: it becomes a 400 line naming the field, never a failed batch."""

    def __init__(self, message: str, param: str | None, code: str = "invalid_request"):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


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


@dataclass
class EngineRequest:
    row_index: int
    custom_id: str
    body: dict[str, Any]
    url: str = CHAT_COMPLETIONS_URL


@dataclass(frozen=True)
class Alternative:
    token: str
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """The sampled token's log probability and the most likely alternatives at its position."""

    token: str
    logprob: float
    top: list[Alternative] = field(default_factory=list)


@dataclass(frozen=True)
class Completion:
    """One generated choice; `prompt` is what a completions request that asked for `echo` gets back
    before its text. When the model called tools, `text` is what it said besides the calls."""

    text: str
    finish_reason: str
    tokens: int
    logprobs: list[TokenLogprob] | None = None
    prompt: str = ""
    embedding: list[float] | None = None  # what an embeddings input gets instead of text
    tool_calls: list[ToolCall] | None = None  # read out of a chat answer when the request gave `tools`


@dataclass(kw_only=True)
class Answer:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completions: list[Completion] = field(default_factory=list)
    error: UnsupportedRequest | None = None

    @property
    def completion_tokens(self) -> int:
        return sum(completion.tokens for completion in self.completions)


@dataclass(kw_only=True)
class Finished(Answer):
    """What an engine reports for one submitted request, by its ticket."""

    ticket: Hashable


@dataclass(kw_only=True)
class EngineResult(Answer):
    """What a run gets back for one of its requests."""

    request: EngineRequest
    latency_s: float | None = None


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
