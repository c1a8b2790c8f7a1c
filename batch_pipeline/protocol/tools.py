"""OpenAI `tools` on chat requests, engine-neutral.

`tool_choice: "required"` and a named function need nothing from the model: generation is held to a JSON
schema built from the tools' parameters and that JSON becomes the calls, so they work on every model.
`"auto"` leaves the choice to the model: an engine reads the calls out of the text with a parser of its
own (the vLLM engine's is in `generation.engine.vllm.tool_parsing`). `"none"` answers in text and shows
the model no tools.
"""

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError

from batch_pipeline.protocol.batch import new_id
from batch_pipeline.protocol.errors import UnsupportedRequest, refusal
from batch_pipeline.protocol.sampling import JsonSchema


class FunctionCall(BaseModel):
    name: str
    arguments: str  # a JSON object, as text (OpenAI's shape)


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


# What a function's `parameters` is when the tool gives none: arguments are still a JSON object.
_NO_PARAMETERS = {"type": "object", "properties": {}}


class _Function(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: JsonSchema | None = None
    strict: bool | None = None  # required/named always keep to the schema; auto never is constrained


class _Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: _Function


class _FunctionName(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class _NamedChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: _FunctionName


def _choice_kind(value: Any) -> str:
    return "function" if isinstance(value, dict | _NamedChoice) else "mode"


# Tagged so a refusal names the field written (`tool_choice.function.name`), not a union member.
_ToolChoice = Annotated[Annotated[Literal["none", "auto", "required"], Tag("mode")]
                        | Annotated[_NamedChoice, Tag("function")], Discriminator(_choice_kind)]


class _ToolFields(BaseModel):
    """A chat request's tool fields; sampling.py checks the rest of the body."""

    tools: Annotated[list[_Tool], Field(min_length=1)] | None = None
    tool_choice: _ToolChoice | None = None
    parallel_tool_calls: bool | None = None


@dataclass(frozen=True)
class ToolUse:
    """The tools a request offers and how its answer must use them."""

    choice: Literal["auto", "required", "named"]
    tools: list[dict[str, Any]]  # OpenAI's shape: for the chat template and vLLM's parser
    # What generation keeps to under required/named (None under auto): the arguments of the named
    # function, or an array of {name, parameters} objects.
    schema: dict[str, Any] | None = None
    function: str | None = None  # the named function
    parallel: bool = True


def _invalid(message: str, param: str) -> UnsupportedRequest:
    return UnsupportedRequest(f"Invalid value for '{param}': {message}", param, code="invalid_value")


def _check_unique(tools: list[_Tool]) -> None:
    seen = set()
    for index, tool in enumerate(tools):
        if tool.function.name in seen:
            raise _invalid(f"a second function named '{tool.function.name}'", f"tools[{index}].function.name")
        seen.add(tool.function.name)


def _hoisted_definitions(tools: list[_Tool]) -> dict[str, Any]:
    """The tools' `$defs`, gathered at the root of the required schema where their `#/$defs/...`
    references point once the parameters sit inside it (as vLLM does)."""
    definitions: dict[str, Any] = {}
    for index, tool in enumerate(tools):
        for name, definition in ((tool.function.parameters or {}).get("$defs") or {}).items():
            if definitions.setdefault(name, definition) != definition:
                raise _invalid(f"'$defs' entry '{name}' differs from another tool's",
                               f"tools[{index}].function.parameters")
    return definitions


def _required_schema(tools: list[_Tool], parallel: bool) -> dict[str, Any]:
    """An array of calls, each one of the tools by name with arguments matching its parameters."""
    calls = [{"type": "object", "additionalProperties": False, "required": ["name", "parameters"],
              "properties": {"name": {"type": "string", "enum": [tool.function.name]},
                             "parameters": {key: value for key, value in
                                            (tool.function.parameters or _NO_PARAMETERS).items() if key != "$defs"}}}
             for tool in tools]
    schema = {"type": "array", "minItems": 1, "items": {"anyOf": calls}, **({} if parallel else {"maxItems": 1})}
    if definitions := _hoisted_definitions(tools):
        schema["$defs"] = definitions
    return schema


def _use(fields: _ToolFields, response_format: Any) -> ToolUse | None:
    tools, choice = fields.tools or [], fields.tool_choice or "auto"  # OpenAI's default with tools
    dumped = [tool.model_dump(exclude_none=True) for tool in tools]
    parallel = fields.parallel_tool_calls is not False
    if choice == "none":
        return None
    if choice == "auto":
        return ToolUse("auto", dumped, parallel=parallel)
    if isinstance(response_format, dict) and response_format.get("type") != "text":
        raise UnsupportedRequest("'response_format' cannot apply when 'tool_choice' forces a tool call: the "
                                 "answer is the call", "response_format", code="invalid_value")
    if choice == "required":
        return ToolUse("required", dumped, _required_schema(tools, parallel), parallel=parallel)
    by_name = {tool.function.name: tool for tool in tools}
    if (tool := by_name.get(choice.function.name)) is None:
        raise _invalid(f"no tool named '{choice.function.name}' in 'tools'", "tool_choice.function.name")
    return ToolUse("named", dumped, tool.function.parameters or _NO_PARAMETERS, function=tool.function.name)


def tool_use(body: dict[str, Any]) -> ToolUse | None:
    """How a chat request's tools shape its answer, or None for a plain text answer; raises
    UnsupportedRequest naming the offending field."""
    try:
        fields = _ToolFields.model_validate(body)
    except ValidationError as exc:
        raise refusal(exc.errors()[0]) from None
    if fields.tools is None:
        for name in ("tool_choice", "parallel_tool_calls"):
            if name in fields.model_fields_set:
                raise UnsupportedRequest(f"'{name}' is only allowed when 'tools' are given", name,
                                         code="invalid_value")
        return None
    _check_unique(fields.tools)
    return _use(fields, body.get("response_format"))


def _call(name: str, arguments: dict[str, Any]) -> ToolCall:
    return ToolCall(id=new_id("call_"),
                    function=FunctionCall(name=name, arguments=json.dumps(arguments, ensure_ascii=False)))


class _Invocation(BaseModel):
    name: str
    parameters: dict[str, Any]


_INVOCATIONS = TypeAdapter(list[_Invocation])


def forced_calls(use: ToolUse, text: str) -> list[ToolCall] | None:
    """The calls a required/named answer's JSON stands for; None when it is not that JSON (an answer
    cut short by max_tokens), which then stays text."""
    try:
        if use.choice == "named":
            arguments = json.loads(text)
            return [_call(use.function, arguments)] if isinstance(arguments, dict) else None
        return [_call(invocation.name, invocation.parameters) for invocation in _INVOCATIONS.validate_json(text)]
    except (json.JSONDecodeError, ValidationError):
        return None


def finish_reason(use: ToolUse, calls: list[ToolCall] | None, reason: str) -> str:
    """OpenAI's: `tool_calls` when auto or required made calls, while a named call keeps `stop` (OpenAI
    does; vLLM matches it); a cut answer stays `length`."""
    return "tool_calls" if calls and reason == "stop" and use.choice != "named" else reason
