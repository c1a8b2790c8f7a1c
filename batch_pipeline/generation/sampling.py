"""Maps a chat or completions request body's sampling fields to vLLM SamplingParams keyword arguments.

A field we cannot honour fails that one request with a 400 naming the field, never the batch.
"""

import json
from typing import Annotated, Any, Literal

from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from batch_pipeline.core.registry import SamplingDefaults
from batch_pipeline.generation.engine.interface import UnsupportedRequest
from batch_pipeline.intake.body_limits import (
    INT32_MAX,
    INT64_MAX,
    INT64_MIN,
    LOGIT_BIAS_LIMIT,
    dangling_ref,
    dangling_ref_message,
)
from batch_pipeline.intake.openai_format import CHAT_COMPLETIONS_URL, COMPLETIONS_URL, ToolCall

MAX_STOP_SEQUENCES = 4
MAX_N = 16
# API limits: OpenAI's chat top_logprobs and legacy completions logprobs.
MAX_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5
# API default: legacy completions stop at 16 tokens unless asked (chat runs up to the context length).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["json_object"]


def _checked_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Refuses what is not a JSON Schema (checked against its meta-schema) before it reaches the engine."""
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
    if (ref := dangling_ref(schema)) is not None:
        raise ValueError(dangling_ref_message(ref))
    return schema


JsonSchema = Annotated[dict[str, Any], AfterValidator(_checked_schema)]


class _JsonSchema(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    # Without a schema the answer is any JSON object, as with json_object.
    schema_: JsonSchema | None = Field(default=None, alias="schema")
    strict: bool | None = None


class _JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["json_schema"]
    json_schema: _JsonSchema


_ResponseFormat = Annotated[TextFormat | JsonObjectFormat | _JsonSchemaFormat, Field(discriminator="type")]


class _SamplingFields(BaseModel):
    """What chat and completions requests share; anything not declared is refused by name."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str
    max_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, Annotated[float, Field(ge=-LOGIT_BIAS_LIMIT, le=LOGIT_BIAS_LIMIT)]] | None = None
    # vLLM extensions, as its OpenAI server accepts them.
    top_k: int | None = Field(default=None, ge=-1, le=INT32_MAX)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0)
    min_tokens: int | None = Field(default=None, ge=0, le=INT32_MAX)
    # Accepted and without effect on generation, as in OpenAI's batch API.
    user: str | None = None
    service_tier: str | None = None
    stream: Literal[False] | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop: str | list[str] | None) -> str | list[str] | None:
        sequences = [stop] if isinstance(stop, str) else stop or []
        if len(sequences) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if any(sequence == "" for sequence in sequences):
            raise ValueError("stop sequences must not be empty")
        return stop

    def check_combinations(self) -> None:
        """Refuses field combinations no single field's type can rule out."""

    def logprobs_count(self) -> int | None:
        """How many alternatives per token vLLM reports, or None for no log probabilities."""
        return None

    def structured_output(self) -> dict[str, Any] | None:
        """vLLM StructuredOutputsParams fields, or None for free text."""
        return None


class ChatSamplingFields(_SamplingFields):
    messages: list[Any]
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: _ResponseFormat | None = None
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
            case _JsonSchemaFormat(json_schema=_JsonSchema(schema_=dict() as schema)):
                return {"json": schema}
            case JsonObjectFormat() | _JsonSchemaFormat():
                return {"json_object": True}
        return None


class CompletionSamplingFields(_SamplingFields):
    prompt: Any
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1, le=MAX_N)

    def check_combinations(self) -> None:
        if self.suffix:
            raise UnsupportedRequest("'suffix' (insertion) is not supported: the served models have no "
                                     "fill-in-the-middle mode", "suffix", code="unsupported_parameter")
        if self.best_of is not None and self.best_of != self.n:
            raise UnsupportedRequest("'best_of' other than 'n' is not supported", "best_of",
                                     code="unsupported_parameter")
        if self.echo and self.logprobs is not None:
            raise UnsupportedRequest("'echo' together with 'logprobs' is not supported (it would need the "
                                     "prompt's log probabilities)", "echo", code="unsupported_parameter")

    def logprobs_count(self) -> int | None:
        return self.logprobs


_FIELDS_BY_URL: dict[str, type[_SamplingFields]] = {
    CHAT_COMPLETIONS_URL: ChatSamplingFields,
    COMPLETIONS_URL: CompletionSamplingFields,
}
_PASSTHROUGH = ("temperature", "top_p", "n", "seed", "presence_penalty", "frequency_penalty",
                "top_k", "min_p", "repetition_penalty", "min_tokens")


_FORMAT_TYPES = {"text", "json_object", "json_schema"}
# The tags of tagged unions, by the field they follow in an error location.
_UNION_TAGS = {"response_format": _FORMAT_TYPES, "format": _FORMAT_TYPES, "tool_choice": {"mode", "function"}}


def _fields_only(loc: tuple) -> list[str | int]:
    """A pydantic error location without the union members it names (a union's tag, `str`,
    `list[...]`): what is left is the path of fields the user wrote."""
    parts = list(loc)
    return [part for index, part in enumerate(parts)
            if not ((index and part in _UNION_TAGS.get(parts[index - 1], ()))
                    or part == "str" or str(part).startswith("list["))]


def _param(parts: list[str | int]) -> str | None:
    """OpenAI's spelling of a field's path: `tools[0].function.name`."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in parts).lstrip(".") or None


def refusal(error: dict) -> UnsupportedRequest:
    """A request body's first validation error as the 400 that names its field."""
    param = _param(_fields_only(error["loc"]))
    if error["type"] == "extra_forbidden":
        return UnsupportedRequest(f"Unsupported parameter: '{param}' is not supported by this server.",
                                  param, code="unsupported_parameter")
    message = error["msg"].removeprefix("Value error, ")
    return UnsupportedRequest(f"Invalid value for '{param}': {message}", param, code="invalid_value")


def _check_combination(kwargs: dict[str, Any]) -> None:
    if kwargs.get("n", 1) > 1 and kwargs.get("temperature", 1.0) == 0:
        raise UnsupportedRequest("'n' greater than 1 needs a temperature above 0 (greedy decoding gives "
                                 "one answer)", "n", code="invalid_value")
    if "min_tokens" in kwargs and "max_tokens" in kwargs and kwargs["min_tokens"] > kwargs["max_tokens"]:
        raise UnsupportedRequest("'min_tokens' must not exceed 'max_tokens'", "min_tokens", code="invalid_value")


def sampling_kwargs(body: dict[str, Any], defaults: SamplingDefaults,
                    url: str = CHAT_COMPLETIONS_URL) -> dict[str, Any]:
    """Request fields over registry defaults, as SamplingParams keyword arguments (`structured_outputs`
    as a dict of StructuredOutputsParams fields); raises UnsupportedRequest naming the offending field."""
    try:
        fields = _FIELDS_BY_URL[url].model_validate(body)
    except ValidationError as exc:
        raise refusal(exc.errors()[0]) from None
    fields.check_combinations()
    kwargs: dict[str, Any] = defaults.model_dump(exclude_none=True)
    for name in _PASSTHROUGH:
        value = getattr(fields, name)
        if name in fields.model_fields_set and value is not None:
            kwargs[name] = value
    max_tokens = getattr(fields, "max_completion_tokens", None) or fields.max_tokens
    if max_tokens is not None:
        kwargs["max_tokens"] = max_tokens
    elif url == COMPLETIONS_URL:
        kwargs.setdefault("max_tokens", COMPLETIONS_DEFAULT_MAX_TOKENS)
    if fields.stop is not None:
        kwargs["stop"] = [fields.stop] if isinstance(fields.stop, str) else fields.stop
    _check_combination(kwargs)
    if fields.logit_bias:
        try:
            kwargs["logit_bias"] = {int(token): bias for token, bias in fields.logit_bias.items()}
        except ValueError:
            raise UnsupportedRequest("Invalid value for 'logit_bias': keys must be token ids",
                                     "logit_bias", code="invalid_value") from None
    if (logprobs := fields.logprobs_count()) is not None:
        kwargs["logprobs"] = logprobs
    if (structured := fields.structured_output()) is not None:
        kwargs["structured_outputs"] = structured
    return kwargs


_MESSAGE_KEYS = {"role", "content", "name"}
# What a message of these roles may carry besides.
_ROLE_KEYS = {"assistant": {"tool_calls"}, "tool": {"tool_call_id"}}
_TOOL_CALLS = TypeAdapter(list[ToolCall])


def _template_calls(calls: Any, index: int) -> list[dict[str, Any]]:
    """An assistant turn's tool calls with their arguments as objects: chat templates render them so
    (vLLM hands them over the same way)."""
    try:
        parsed = _TOOL_CALLS.validate_python(calls)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise refusal({**error, "loc": ("messages", index, "tool_calls", *error["loc"])}) from None
    rendered = []
    for position, call in enumerate(parsed):
        try:
            arguments = json.loads(call.function.arguments)
        except json.JSONDecodeError:
            arguments = None
        if not isinstance(arguments, dict):
            param = f"messages[{index}].tool_calls[{position}].function.arguments"
            raise UnsupportedRequest(f"Invalid value for '{param}': must be a JSON object", param,
                                     code="invalid_value")
        rendered.append({"id": call.id, "type": "function",
                         "function": {"name": call.function.name, "arguments": arguments}})
    return rendered


def _tool_fields(message: dict[str, Any], index: int) -> dict[str, Any]:
    """What links a tool call to its result, for templates that render tool conversations."""
    if message["role"] == "tool":
        if not isinstance(message.get("tool_call_id"), str):
            raise UnsupportedRequest("A tool message needs the 'tool_call_id' it answers",
                                     f"messages[{index}].tool_call_id", code="invalid_value")
        return {"tool_call_id": message["tool_call_id"]}
    if message.get("tool_calls"):
        return {"tool_calls": _template_calls(message["tool_calls"], index)}
    return {}


def prompt_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Messages for a chat template: content parts are joined (content null is empty text); tool calls
    and tool results pass through; non-text parts are refused rather than silently dropped."""
    messages = []
    for index, message in enumerate(body["messages"]):
        for key in sorted(set(message) - _MESSAGE_KEYS - _ROLE_KEYS.get(message["role"], set())):
            raise UnsupportedRequest(f"Unsupported message field '{key}': this server runs text-only chat",
                                     f"messages[{index}].{key}", code="unsupported_parameter")
        content = message.get("content")
        if isinstance(content, list):
            texts = []
            for part_index, part in enumerate(content):
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise UnsupportedRequest(
                        f"Only text content parts are supported; got type '{part.get('type')}'",
                        f"messages[{index}].content[{part_index}]", code="unsupported_content")
                texts.append(part["text"])
            content = "\n".join(texts)
        messages.append({"role": message["role"], "content": content or "", **_tool_fields(message, index)})
    return messages
