"""The lines a run and the engine host exchange: one job per HTTP call, not one call per request.

A run posts its job header and every remaining request as NDJSON; results stream back, one line per
request in completion order, so the host keeps the engine as full as an in-process engine would.
"""

from typing import Any

from pydantic import BaseModel, field_validator

from batch_pipeline.generation.engine.spec import EngineSpec
from batch_pipeline.protocol.answers import Completion, EngineRequest, EngineResult
from batch_pipeline.protocol.endpoints import SUPPORTED_URLS
from batch_pipeline.protocol.errors import UnsupportedRequest

GENERATE_PATH = "/v1/generate"


class HostJob(BaseModel):
    # Registry entries differing only in sampling, and a model's adapters, share one host: the
    # entry (sampling defaults) and the adapter travel per job.
    spec: EngineSpec
    max_in_flight: int


class HostRequest(BaseModel):
    row_index: int
    custom_id: str
    body: dict[str, Any]
    url: str

    @field_validator("url")
    @classmethod
    def _supported(cls, url: str) -> str:
        """Checked here, so a job naming another endpoint is the caller's 400, not an engine failure."""
        if url not in SUPPORTED_URLS:
            raise ValueError(f"unsupported url {url!r}: one of {', '.join(SUPPORTED_URLS)}")
        return url

    @classmethod
    def of(cls, request: EngineRequest) -> "HostRequest":
        return cls(row_index=request.row_index, custom_id=request.custom_id, body=request.body, url=request.url)

    def engine_request(self) -> EngineRequest:
        return EngineRequest(self.row_index, self.custom_id, self.body, self.url)


class HostRefusal(BaseModel):
    message: str
    param: str | None
    code: str


class HostResult(BaseModel):
    row_index: int
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completions: list[Completion] = []
    error: HostRefusal | None = None
    latency_s: float | None = None

    @classmethod
    def of(cls, result: EngineResult) -> "HostResult":
        error = result.error
        return cls(row_index=result.request.row_index, prompt_tokens=result.prompt_tokens,
                   cached_tokens=result.cached_tokens, completions=result.completions,
                   error=HostRefusal(message=error.message, param=error.param, code=error.code) if error else None,
                   latency_s=result.latency_s)

    def engine_result(self, request: EngineRequest) -> EngineResult:
        error = UnsupportedRequest(self.error.message, self.error.param, self.error.code) if self.error else None
        return EngineResult(request=request, prompt_tokens=self.prompt_tokens, cached_tokens=self.cached_tokens,
                            error=error, latency_s=self.latency_s, completions=self.completions)


class HostFailure(BaseModel):
    """The last line when the engine itself failed: the run fails and its retry starts a new host."""

    failure: str
    suspects: list[int] | None = None  # the row indexes the engine held (EngineFailure.suspects)
