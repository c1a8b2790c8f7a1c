"""Feeds a run's requests to the long-lived vLLM server, many in flight, results in completion order.

Per-request refusals come back as results, while a server that stops answering fails the run so a
retry can start a fresh one.
"""

import asyncio
import contextlib
from collections.abc import Hashable, Iterable, Iterator
from typing import Any

import httpx

from batch_pipeline.core.registry import SamplingDefaults
from batch_pipeline.generation.engine.interface import (
    Completion,
    EngineRequest,
    Finished,
    StreamingEngine,
    UnsupportedRequest,
)
from batch_pipeline.generation.engine.server_state import EngineServerError, ServerState
from batch_pipeline.generation.sampling import prompt_messages, sampling_kwargs

# vLLM schedules at most max_num_seqs (256 on CPU) at once; more connections only load its API server.
_MAX_CONNECTIONS = 256
_TIMEOUT = httpx.Timeout(connect=10, read=3600, write=60, pool=None)


class ServedEngine(StreamingEngine):
    def __init__(self, state: ServerState, sampling: SamplingDefaults):
        self.state = state
        self.sampling = sampling
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: httpx.AsyncClient | None = None
        self._pending: set[asyncio.Task] = set()

    def in_flight_limit(self, max_in_flight: int) -> int:
        return min(max_in_flight, _MAX_CONNECTIONS)

    @contextlib.contextmanager
    def _streaming(self) -> Iterator[None]:
        self._loop = asyncio.new_event_loop()
        self._client = httpx.AsyncClient(
            base_url=self.state.base_url, timeout=_TIMEOUT,
            limits=httpx.Limits(max_connections=_MAX_CONNECTIONS, max_keepalive_connections=_MAX_CONNECTIONS))
        try:
            yield
        finally:
            self._loop.run_until_complete(self._client.aclose())
            self._loop.close()
            self._loop = self._client = None

    def _payload(self, body: dict[str, Any]) -> dict[str, Any]:
        kwargs = sampling_kwargs(body, self.sampling)
        if "logit_bias" in kwargs:
            kwargs["logit_bias"] = {str(token): bias for token, bias in kwargs["logit_bias"].items()}
        return {**kwargs, "model": self.state.served_name, "messages": prompt_messages(body),
                "return_token_ids": True}

    async def _send(self, payload: dict[str, Any]) -> httpx.Response:
        try:
            return await self._client.post("/v1/chat/completions", json=payload)
        except httpx.TransportError as exc:
            raise EngineServerError(f"the vLLM server at {self.state.base_url} stopped answering: {exc!r}") from None

    def _submit(self, request: EngineRequest) -> Hashable:
        task = self._loop.create_task(self._send(self._payload(request.body)))
        self._pending.add(task)
        return task

    def _finished(self) -> Iterable[Finished]:
        done, _ = self._loop.run_until_complete(asyncio.wait(self._pending, return_when=asyncio.FIRST_COMPLETED))
        self._pending -= done
        return [self._outcome(task, task.result()) for task in done]

    def _abort(self, tickets: list[Hashable]) -> None:
        """Closing the connections makes vLLM abort what they carried."""
        for task in tickets:
            task.cancel()
        self._loop.run_until_complete(asyncio.wait(tickets))
        self._pending.clear()

    def _outcome(self, task: asyncio.Task, response: httpx.Response) -> Finished:
        if response.status_code == 400:
            return Finished(ticket=task, error=_refusal(response))
        if response.status_code != 200:
            raise EngineServerError(f"the vLLM server at {self.state.base_url} answered "
                                    f"{response.status_code}: {response.text[:500]}")
        data = response.json()
        choices = sorted(data["choices"], key=lambda choice: choice["index"])
        return Finished(ticket=task, prompt_tokens=data["usage"]["prompt_tokens"],
                        completions=[Completion(text=choice["message"].get("content") or "",
                                                finish_reason=choice.get("finish_reason") or "stop",
                                                tokens=len(choice.get("token_ids") or [])) for choice in choices])


def _refusal(response: httpx.Response) -> UnsupportedRequest:
    try:
        payload = response.json()
    except ValueError:
        return UnsupportedRequest(response.text[:500], None, code="invalid_value")
    error = payload.get("error") if isinstance(payload.get("error"), dict) else payload
    message = str(error.get("message") or response.text[:500])
    if "maximum context length" in message:
        return UnsupportedRequest(message, "messages", code="context_length_exceeded")
    return UnsupportedRequest(message, error.get("param"), code="invalid_value")
