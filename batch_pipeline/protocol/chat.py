"""`/v1/chat/completions`: its input body, the fields a request may set, and its answer body."""

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from batch_pipeline.protocol.answers import Completion, EngineResult, TokenLogprob
from batch_pipeline.protocol.batch import InputLine, RequestBody, new_id
from batch_pipeline.protocol.endpoint import Endpoint
from batch_pipeline.protocol.errors import UnsupportedRequest
from batch_pipeline.protocol.limits import INT32_MAX
from batch_pipeline.protocol.sampling import (
    MAX_TOP_LOGPROBS,
    JsonObjectFormat,
    JsonSchemaFormat,
    JsonSchemaSpec,
    ResponseFormat,
    SamplingFields,
)
from batch_pipeline.protocol.tools import ToolCall
from batch_pipeline.protocol.usage import GeneratedBody, usage_of

CHAT_COMPLETIONS_URL = "/v1/chat/completions"


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class ChatBody(RequestBody):
    messages: list[ChatMessage] = Field(min_length=1)


class ChatInputLine(InputLine):
    url: Literal["/v1/chat/completions"]
    body: ChatBody


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobContent(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprobContent]
    refusal: None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    # Left out when no tool was called, as OpenAI leaves it out.
    tool_calls: list[ToolCall] | None = Field(default=None, exclude_if=lambda calls: calls is None)


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str


class ChatCompletion(GeneratedBody):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[Choice]


class ChatSamplingFields(SamplingFields):
    messages: list[Any]
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    # Checked by generation.tool_calls, which turns them into a schema, a template argument or a parser.
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None

    def check_combinations(self) -> None:
        if self.top_logprobs is not None and not self.logprobs:
            raise UnsupportedRequest("'top_logprobs' needs 'logprobs' set to true", "top_logprobs",
                                     code="invalid_value")

    def logprobs_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def structured_output(self) -> dict[str, Any] | None:
        match self.response_format:
            case JsonSchemaFormat(json_schema=JsonSchemaSpec(schema_=dict() as schema)):
                return {"json": schema}
            case JsonObjectFormat() | JsonSchemaFormat():
                return {"json_object": True}
        return None


def _top(token: str, logprob: float) -> TopLogprob:
    return TopLogprob(token=token, logprob=logprob, bytes=list(token.encode("utf-8")))


def _chat_logprobs(tokens: list[TokenLogprob] | None) -> ChatLogprobs | None:
    if tokens is None:
        return None
    return ChatLogprobs(content=[
        TokenLogprobContent(**_top(t.token, t.logprob).model_dump(),
                            top_logprobs=[_top(a.token, a.logprob) for a in t.top])
        for t in tokens])


def _message(completion: Completion) -> AssistantMessage:
    """With tool calls, `content` is null unless the model also said something (OpenAI's shape)."""
    if completion.tool_calls is None:
        return AssistantMessage(content=completion.text)
    return AssistantMessage(content=completion.text or None, tool_calls=completion.tool_calls)


def chat_completion(model: str, result: EngineResult) -> ChatCompletion:
    return ChatCompletion(
        id=new_id("chatcmpl-"), created=int(time.time()), model=model, usage=usage_of(result),
        choices=[Choice(index=i, message=_message(c), finish_reason=c.finish_reason,
                        logprobs=_chat_logprobs(c.logprobs))
                 for i, c in enumerate(result.completions)],
    )


ENDPOINT = Endpoint(url=CHAT_COMPLETIONS_URL, input_line=ChatInputLine, answer_body=chat_completion,
                    conversation=lambda body: body["messages"])
