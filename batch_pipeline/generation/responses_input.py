"""A `/v1/responses` request as the chat request it amounts to, so one engine path serves both.

Fields are checked under their Responses API names first, so a refusal names the field the user
wrote (`max_output_tokens`, `text.format.schema`), never its chat counterpart.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from batch_pipeline.generation.engine.interface import EngineRequest
from batch_pipeline.generation.sampling import JsonObjectFormat, JsonSchema, TextFormat, refusal
from batch_pipeline.intake.openai_format import CHAT_COMPLETIONS_URL, RESPONSES_URL


class _JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["json_schema"]
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    schema_: JsonSchema = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class _Text(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Annotated[TextFormat | JsonObjectFormat | _JsonSchemaFormat, Field(discriminator="type")] | None = None


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
            case _JsonSchemaFormat() as schema_format:
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
