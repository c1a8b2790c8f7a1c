"""Hands a run's requests to the warm engine host in one call and reads results as they finish.

Per-request refusals come back as results, while a host that stops answering fails the run so a
retry can start a fresh one. Closing the stream early (a chunk-boundary stop) drops the connection,
which makes the host abort what it still holds.
"""

import json
from collections.abc import Iterator

import httpx

from batch_pipeline.core.loopback import direct_client
from batch_pipeline.generation.engine.host_auth import auth_headers, proves_identity
from batch_pipeline.generation.engine.host_protocol import GENERATE_PATH, HostJob, HostRequest, HostResult
from batch_pipeline.generation.engine.interface import StreamingEngine
from batch_pipeline.generation.engine.server_state import EngineServerError, ServerState
from batch_pipeline.generation.engine.spec import EngineSpec
from batch_pipeline.protocol.answers import EngineRequest, EngineResult

_PROMPT_FIELDS = frozenset({"messages", "prompt", "input"})
_TIMEOUT = httpx.Timeout(connect=10, read=3600, write=60, pool=None)


class ServedEngine(StreamingEngine):
    def __init__(self, state: ServerState, spec: EngineSpec, secret: str):
        self.state = state
        self.spec = spec
        self.secret = secret

    def stream(self, requests: Iterator[EngineRequest], max_in_flight: int) -> Iterator[EngineResult]:
        # What a result row needs of its request (settings a Responses answer echoes); the prompts have
        # gone to the host.
        sent: dict[int, EngineRequest] = {}

        def job_lines() -> Iterator[bytes]:
            yield HostJob(spec=self.spec, max_in_flight=max_in_flight).model_dump_json().encode() + b"\n"
            for request in requests:
                settings = {key: value for key, value in request.body.items() if key not in _PROMPT_FIELDS}
                sent[request.row_index] = EngineRequest(request.row_index, request.custom_id, settings, request.url)
                yield HostRequest.of(request).model_dump_json().encode() + b"\n"

        try:
            with direct_client(base_url=self.state.base_url, timeout=_TIMEOUT) as client:
                # The job goes out on the connection that just proved the host's identity (kept alive).
                if not proves_identity(client, self.secret, self.state.served_name):
                    raise EngineServerError(
                        f"the engine host at {self.state.base_url} stopped answering, or what answers there is not "
                        "the host this pipeline started (it cannot prove it holds the host's secret); no request "
                        "was sent to it")
                with client.stream("POST", GENERATE_PATH, content=job_lines(),
                                   headers=auth_headers(self.secret)) as response:
                    yield from self._results(response, sent)
        except httpx.TransportError as exc:
            raise EngineServerError(f"the engine host at {self.state.base_url} stopped answering: {exc!r}") from None
        if sent:
            raise EngineServerError(f"the engine host at {self.state.base_url} ended the job with "
                                    f"{len(sent)} requests unanswered")

    def _results(self, response: httpx.Response, sent: dict[int, EngineRequest]) -> Iterator[EngineResult]:
        if response.status_code != 200:
            raise EngineServerError(f"the engine host at {self.state.base_url} answered "
                                    f"{response.status_code}: {response.read()[:500]!r}")
        for line in response.iter_lines():
            if line:
                yield self._result(line, sent)

    def _result(self, line: str, sent: dict[int, EngineRequest]) -> EngineResult:
        try:
            data = json.loads(line)
            if "failure" in data:
                raise EngineServerError(f"the engine at {self.state.base_url} failed: {data['failure']}",
                                        suspects=data.get("suspects"))
            result = HostResult.model_validate(data)
            return result.engine_result(sent.pop(result.row_index))
        except (ValueError, KeyError) as exc:  # ValidationError is a ValueError
            raise EngineServerError(f"the engine host at {self.state.base_url} sent an unreadable line "
                                    f"({exc}): {line[:200]!r}") from None
