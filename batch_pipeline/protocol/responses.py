"""`/v1/responses`: its input body, its answer (a Response object), and the chat request it amounts to,
so every engine serves it through its chat path.

Fields are checked under their Responses API names first, so a refusal names the field the user
wrote (`max_output_tokens`, `text.format.schema`), never its chat counterpart.
"""

import json
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from batch_pipeline.protocol.answers import EngineRequest, EngineResult
from batch_pipeline.protocol.batch import InputLine, RequestBody, new_id
from batch_pipeline.protocol.chat import CHAT_COMPLETIONS_URL
from batch_pipeline.protocol.endpoint import Endpoint
from batch_pipeline.protocol.errors import UnsupportedRequest, refusal
from batch_pipeline.protocol.sampling import JsonObjectFormat, JsonSchema, TextFormat
from batch_pipeline.protocol.usage import InputTokensDetails, TokenUsage

RESPONSES_URL = "/v1/responses"


class ResponsesBody(RequestBody):
    input: str | Annotated[list[dict[str, Any]], Field(min_length=1)]


class ResponsesInputLine(InputLine):
    url: Literal["/v1/responses"]
    body: ResponsesBody


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = []


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: Literal["completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseObject(BaseModel):
    """The Responses API's `response` object, with the request's own settings echoed as OpenAI does."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["completed", "incomplete"]
    error: None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputMessage]
    parallel_tool_calls: bool = False
    temperature: float | None = None
    top_p: float | None = None
    text: dict[str, Any] = {"format": {"type": "text"}}
    tool_choice: Literal["none"] = "none"
    tools: list[Any] = []
    truncation: Literal["disabled"] = "disabled"
    usage: TokenUsage
    metadata: dict[str, str] = {}


def response_object(model: str, result: EngineResult) -> ResponseObject:
    """One answer (the Responses API has no `n`); cut by max_output_tokens, it is `incomplete`."""
    settings, answer = result.request.body, result.completions[0]
    status = "incomplete" if answer.finish_reason == "length" else "completed"
    return ResponseObject(
        id=new_id("resp_"), created_at=int(time.time()), status=status, model=model,
        incomplete_details=IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None,
        output=[OutputMessage(id=new_id("msg_"), status=status, content=[OutputText(text=answer.text)])],
        instructions=settings.get("instructions"), max_output_tokens=settings.get("max_output_tokens"),
        temperature=settings.get("temperature"), top_p=settings.get("top_p"),
        text={"format": (settings.get("text") or {}).get("format") or {"type": "text"}},
        metadata=settings.get("metadata") or {},
        usage=TokenUsage(input_tokens=result.prompt_tokens, output_tokens=answer.tokens,
                         input_tokens_details=InputTokensDetails(cached_tokens=result.cached_tokens),
                         total_tokens=result.prompt_tokens + answer.tokens),
    )


class _TextJsonSchema(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["json_schema"]
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    schema_: JsonSchema = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class _Text(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Annotated[TextFormat | JsonObjectFormat | _TextJsonSchema, Field(discriminator="type")] | None = None


class _ContentPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["input_text", "output_text"]
    text: str


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[_ContentPart]


class ResponsesFields(BaseModel):
    """Every field we accept; tools, reasoning, conversation state and the like are refused by name."""

    model_config = ConfigDict(extra="forbid")

    model: str
    input: str | list[_Message]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    text: _Text | None = None
    # Accepted and without effect on generation, as in OpenAI's batch API.
    metadata: dict[str, str] | None = None
    store: bool | None = None
    user: str | None = None
    service_tier: str | None = None
    stream: Literal[False] | None = None
    truncation: Literal["disabled"] | None = None

    def chat_body(self) -> dict[str, Any]:
        messages = [{"role": "system", "content": self.instructions}] if self.instructions else []
        items = [_Message(role="user", content=self.input)] if isinstance(self.input, str) else self.input
        messages += [{"role": item.role, "content": item.content if isinstance(item.content, str)
                      else "\n".join(part.text for part in item.content)} for item in items]
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        for name, value in (("max_tokens", self.max_output_tokens), ("temperature", self.temperature),
                            ("top_p", self.top_p)):
            if value is not None:
                body[name] = value
        match self.text.format if self.text else None:
            case _TextJsonSchema() as schema_format:
                body["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": schema_format.name, "schema": schema_format.schema_, "strict": schema_format.strict}}
            case JsonObjectFormat():
                body["response_format"] = {"type": "json_object"}
        return body


def chat_body(body: dict[str, Any]) -> dict[str, Any]:
    """The chat body a Responses body stands for; raises UnsupportedRequest naming the Responses field."""
    try:
        return ResponsesFields.model_validate(body).chat_body()
    except ValidationError as exc:
        errors = exc.errors()
        # `input` is a string or a list of items: a list's own problem says more than "not a string".
        raise refusal(next((error for error in errors if "str" not in error["loc"]), errors[0])) from None


def chat_equivalent(request: EngineRequest) -> EngineRequest:
    """What the engine runs for a request: a Responses request as its chat request, others as they are."""
    if request.url != RESPONSES_URL:
        return request
    return EngineRequest(request.row_index, request.custom_id, chat_body(request.body), CHAT_COMPLETIONS_URL)


def _conversation(body: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        return chat_body(body)["messages"]
    except UnsupportedRequest:  # refused at generation; show what was sent
        return [{"role": "user", "content": json.dumps(body.get("input"), ensure_ascii=False)}]


ENDPOINT = Endpoint(url=RESPONSES_URL, input_line=ResponsesInputLine, answer_body=response_object,
                    conversation=_conversation)
