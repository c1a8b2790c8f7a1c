"""What a request is to an engine and what it gets back, whatever the engine: the contract between the
endpoints (which format answers) and the engines (which produce them)."""

from dataclasses import dataclass, field
from typing import Any, Literal

from batch_pipeline.protocol.errors import UnsupportedRequest
from batch_pipeline.protocol.tools import ToolCall

# Where a reused answer came from; written into the output line's body (generation.results).
Reuse = Literal["batch_copy", "result_cache"]


@dataclass
class EngineRequest:
    row_index: int
    custom_id: str
    body: dict[str, Any]
    url: str


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
class EngineResult(Answer):
    """What a run gets back for one of its requests."""

    request: EngineRequest
    latency_s: float | None = None
    # Set when the answer was not generated for this request but reused: from an exact copy in the
    # same batch (generation.feed) or from an earlier batch on the same engine (generation.result_cache).
    reused: Reuse | None = None
