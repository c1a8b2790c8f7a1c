"""Feeds a run's requests to the long-lived vLLM server, many in flight, results in completion order.

The same contract as the in-process engine (`VllmEngine.stream`): per-request refusals come back as
results, while a server that stops answering fails the run so a retry can start a fresh one.
"""

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx

from batch_pipeline.engine.server import EngineServerError
from batch_pipeline.engine.server_state import ServerState
from batch_pipeline.engine.vllm_engine import EngineRequest, EngineResult
from batch_pipeline.openai_format import Completion
from batch_pipeline.registry import SamplingDefaults
from batch_pipeline.sampling import UnsupportedRequest, prompt_messages, sampling_kwargs

# vLLM schedules at most max_num_seqs (256 on CPU) at once; more connections only load its API server.
_MAX_CONNECTIONS = 256
_TIMEOUT = httpx.Timeout(connect=10, read=3600, write=60, pool=None)


class ServedEngine:
    def __init__(self, state: ServerState, sampling: SamplingDefaults):
        self.state = state
        self.sampling = sampling

    def _payload(self, body: dict[str, Any]) -> dict[str, Any]:
        kwargs = sampling_kwargs(body, self.sampling)
        if "logit_bias" in kwargs:
            kwargs["logit_bias"] = {str(token): bias for token, bias in kwargs["logit_bias"].items()}
        return {**kwargs, "model": self.state.served_name, "messages": prompt_messages(body),
                "return_token_ids": True}

    async def _send(self, client: httpx.AsyncClient, payload: dict[str, Any]) -> httpx.Response:
        try:
            return await client.post("/v1/chat/completions", json=payload)
        except httpx.TransportError as exc:
            raise EngineServerError(f"the vLLM server at {self.state.base_url} stopped answering: {exc!r}") from None

    def _result(self, request: EngineRequest, response: httpx.Response, submitted: float) -> EngineResult:
        if response.status_code == 400:
            return EngineResult(request=request, error=_refusal(response))
        if response.status_code != 200:
            raise EngineServerError(f"the vLLM server at {self.state.base_url} answered "
                                    f"{response.status_code}: {response.text[:500]}")
        data = response.json()
        choices = sorted(data["choices"], key=lambda choice: choice["index"])
        return EngineResult(
            request=request, prompt_tokens=data["usage"]["prompt_tokens"],
            completions=[Completion(text=choice["message"].get("content") or "",
                                    finish_reason=choice.get("finish_reason") or "stop",
                                    tokens=len(choice.get("token_ids") or [])) for choice in choices],
            latency_s=time.monotonic() - submitted)

    def stream(self, requests: Iterator[EngineRequest], max_in_flight: int) -> Iterator[EngineResult]:
        """Abandoning the iterator closes the connections, and vLLM aborts what they carried."""
        limit = min(max_in_flight, _MAX_CONNECTIONS)
        loop = asyncio.new_event_loop()
        client = httpx.AsyncClient(base_url=self.state.base_url, timeout=_TIMEOUT,
                                   limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit))
        pending: dict[asyncio.Task, tuple[EngineRequest, float]] = {}
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < limit:
                    request = next(requests, None)
                    if request is None:
                        exhausted = True
                        break
                    try:
                        payload = self._payload(request.body)
                    except UnsupportedRequest as refusal:
                        yield EngineResult(request=request, error=refusal)
                        continue
                    pending[loop.create_task(self._send(client, payload))] = (request, time.monotonic())
                if not pending:
                    return
                done, _ = loop.run_until_complete(asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED))
                for task in done:
                    request, submitted = pending.pop(task)
                    yield self._result(request, task.result(), submitted)
        finally:
            if pending:
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.wait(pending))
            loop.run_until_complete(client.aclose())
            loop.close()


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
