"""The engine the tests put in place of vLLM: it runs the real in-flight loop of `SteppedEngine`, and can
be told to fail the ways a real engine does."""

from batch_pipeline.generation.engine.interface import EngineFailure, Finished, SteppedEngine
from batch_pipeline.protocol.answers import Completion
from batch_pipeline.protocol.errors import UnsupportedRequest


class Crash(Exception):
    """What the engine raises when it dies after `crash_after` results."""


class ScriptedEngine(SteppedEngine):
    """Each step finishes its whole window of in-flight requests, newest first, with 10 prompt tokens (4 of
    them cached) and 3 completion tokens. Refuses tools as unsupported. It can die after `crash_after`
    results; fail a whole step while a `poison` row is in flight (then stay dead, as a vLLM engine core
    does); refuse to add an `unaddable` row (as vLLM's serializer does); or be `dead` from the start.
    With `echo`, each answer quotes its request's last message, so a shared answer shows whose it is."""

    def __init__(self, crash_after: int | None = None, poison: set[int] = frozenset(),
                 unaddable: set[int] = frozenset(), dead: bool = False, echo: bool = False):
        self.crash_after, self.poison, self.unaddable, self.dead, self.echo = crash_after, poison, unaddable, dead, echo
        self.seen: list[int] = []
        self.aborted: list = []
        self._window = []

    def _submit(self, request):
        if self.dead:
            raise EngineFailure("EngineDeadError: the engine core died")
        if request.row_index in self.unaddable:
            raise OverflowError("can't serialize ints < -2**63 or > 2**64 - 1")
        if request.body.get("tools"):
            raise UnsupportedRequest("no tools", "tools", "unsupported_parameter")
        self._window.append(request)
        return request.row_index

    def _finished(self):
        if self.poison & {request.row_index for request in self._window}:
            self.dead = True
            raise RuntimeError("probability tensor contains either inf, nan or element < 0")
        if self.crash_after is not None and len(self.seen) >= self.crash_after:
            raise Crash
        finished = self._window[::-1]
        if self.crash_after is not None:
            finished = finished[:self.crash_after - len(self.seen)]
        self._window = [request for request in self._window if request not in finished]
        self.seen += [request.row_index for request in finished]
        return [Finished(ticket=request.row_index, prompt_tokens=10, cached_tokens=4,
                         completions=[Completion(text=self._answer(request), finish_reason="stop", tokens=3)])
                for request in finished]

    def _answer(self, request) -> str:
        if self.echo:
            return f"answer to {request.body['messages'][-1]['content']}"
        return f"answer {request.custom_id}"

    def _abort(self, tickets):
        self.aborted = list(tickets)
        self._window = [request for request in self._window if request.row_index not in tickets]
