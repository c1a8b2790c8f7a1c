"""OpenAI Batch API wire formats: input lines, output/error lines and chat.completion bodies."""

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

CHAT_COMPLETIONS_URL = "/v1/chat/completions"
SUPPORTED_URLS = (CHAT_COMPLETIONS_URL,)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class ChatBody(BaseModel):
    """Only what every request must have; sampling fields are checked per request at generation."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)


class BatchInputLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    custom_id: str = Field(min_length=1)
    method: Literal["POST"]
    url: Literal[SUPPORTED_URLS]  # type: ignore[valid-type]
    body: ChatBody


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None


class ErrorDetail(BaseModel):
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class ResponseEnvelope(BaseModel):
    status_code: int
    request_id: str
    body: dict[str, Any]


class BatchLineError(BaseModel):
    code: str
    message: str


class BatchOutputLine(BaseModel):
    id: str
    custom_id: str
    response: ResponseEnvelope | None
    error: BatchLineError | None = None


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex}"


def error_body(message: str, param: str | None = None, code: str | None = None) -> ErrorBody:
    return ErrorBody(error=ErrorDetail(message=message, param=param, code=code))
