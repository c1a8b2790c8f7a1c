"""The engine the tests put in place of vLLM: it runs the real in-flight loop of `SteppedEngine`."""

from batch_pipeline.generation.engine.interface import Finished, SteppedEngine
from batch_pipeline.protocol.answers import Completion
from batch_pipeline.protocol.errors import UnsupportedRequest


class Crash(Exception):
    """What the engine raises when it dies after `crash_after` results."""


class ScriptedEngine(SteppedEngine):
    """Runs the real in-flight loop: finishes its window of in-flight requests newest first, and can
    die after a number of results."""

    def __init__(self, crash_after: int | None = None):
        self.crash_after = crash_after
        self.seen: list[int] = []
        self.aborted: list = []
        self._window = []

    def _submit(self, request):
        if request.body.get("tools"):
            raise UnsupportedRequest("no tools", "tools", "unsupported_parameter")
        self._window.append(request)
        return request.row_index

    def _finished(self):
        if self.crash_after is not None and len(self.seen) >= self.crash_after:
            raise Crash
        finished = self._window[::-1]
        if self.crash_after is not None:
            finished = finished[:self.crash_after - len(self.seen)]
        self._window = [request for request in self._window if request not in finished]
        self.seen += [request.row_index for request in finished]
        return [Finished(ticket=request.row_index, prompt_tokens=10, cached_tokens=4,
                         completions=[Completion(text=f"answer {request.custom_id}", finish_reason="stop", tokens=3)])
                for request in finished]

    def _abort(self, tickets):
        self.aborted = tickets

