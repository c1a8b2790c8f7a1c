"""Token counts as OpenAI reports them, shared by the endpoints' answer bodies and the batch object."""

from pydantic import BaseModel

from batch_pipeline.protocol.answers import EngineResult


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = PromptTokensDetails()


class GeneratedBody(BaseModel):
    id: str
    created: int
    model: str
    usage: Usage
    system_fingerprint: str | None = None


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class TokenUsage(BaseModel):
    """`usage` of a Responses API answer and of a batch object alike."""

    input_tokens: int = 0
    input_tokens_details: InputTokensDetails = InputTokensDetails()
    output_tokens: int = 0
    output_tokens_details: OutputTokensDetails = OutputTokensDetails()
    total_tokens: int = 0


def usage_of(result: EngineResult) -> Usage:
    return Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                 total_tokens=result.prompt_tokens + result.completion_tokens,
                 prompt_tokens_details=PromptTokensDetails(cached_tokens=result.cached_tokens))
