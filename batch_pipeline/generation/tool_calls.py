"""OpenAI `tools` on chat requests, served the way vLLM's OpenAI server serves them.

`tool_choice: "required"` and a named function need nothing from the model: generation is held to a JSON
schema built from the tools' parameters and that JSON becomes the calls, so they work on every model.
`"auto"` leaves the choice to the model: only a model whose registry entry names a vLLM tool parser
(`tool_call_parser`) can serve it, its chat template showing the tools and vLLM's parser reading the
calls out of the text. `"none"` answers in text and shows the model no tools.
"""

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError

from batch_pipeline.generation.engine.interface import UnsupportedRequest
from batch_pipeline.generation.sampling import JsonSchema, refusal
from batch_pipeline.intake.openai_format import FunctionCall, ToolCall, new_id

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


def check_template_renders_calls(messages: list[dict[str, Any]], template: str) -> None:
    """Refuses an assistant turn with tool calls when the chat template never mentions `tool_calls`:
    rendering would drop the calls without a word (SmolLM2's template renders role and content only)."""
    if "tool_calls" in template:
        return
    for index, message in enumerate(messages):
        if message.get("tool_calls"):
            raise UnsupportedRequest("This model's chat template does not render tool calls, so the conversation "
                                     "cannot be shown to it as written", f"messages[{index}].tool_calls",
                                     code="unsupported_parameter")


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


def vllm_tool_parser(name: str) -> type:
    """vLLM's tool parser class registered as `name` (importing vLLM: this runs where the engine does)."""
    from vllm.tool_parsers import ToolParserManager

    try:
        return ToolParserManager.get_tool_parser(name)
    except KeyError:
        known = sorted({*ToolParserManager.tool_parsers, *ToolParserManager.lazy_parsers})
        raise ValueError(f"tool_call_parser '{name}' is not one of vLLM's tool parsers: "
                         f"{', '.join(known)}") from None


@dataclass(frozen=True)
class AutoToolReader:
    """vLLM's own parser for a model's tool-call syntax, reading calls out of a finished answer."""

    parser_class: type
    tokenizer: Any
    request: Any  # the vLLM ChatCompletionRequest the parsers read `tools` from
    parallel: bool

    @classmethod
    def load(cls, use: ToolUse, parser: str | None, model: str, tokenizer: Any) -> "AutoToolReader":
        """Refuses `auto` (400 naming `tools`) for a model without a parser in its registry entry."""
        if parser is None:
            raise UnsupportedRequest(
                f"model '{model}' has no tool-call parser configured in the registry (tool_call_parser), so it "
                "cannot choose whether to call a tool: use tool_choice 'required' or a named function, which "
                "work on every model", "tools", code="unsupported_parameter")
        try:
            parser_class = vllm_tool_parser(parser)
        except ValueError as exc:
            raise UnsupportedRequest(str(exc), "tools", code="unsupported_parameter") from None
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        request = ChatCompletionRequest(model=model, messages=[], tools=use.tools, tool_choice="auto",
                                        parallel_tool_calls=use.parallel)
        # The parser's own adjustments, e.g. keeping special tokens its call markers are made of.
        return cls(parser_class, tokenizer, parser_class(tokenizer, request.tools).adjust_request(request),
                   use.parallel)

    @property
    def skip_special_tokens(self) -> bool:
        return self.request.skip_special_tokens

    def read(self, text: str) -> tuple[str, list[ToolCall] | None]:
        """What the model said besides its calls, and the calls (None when it called none). A parser is
        stateful, so each answer gets its own; one failing on odd text leaves the answer as text (as
        most of vLLM's parsers do themselves) rather than failing the batch."""
        try:
            found = self.parser_class(self.tokenizer, self.request.tools).extract_tool_calls(text, self.request)
        except Exception:
            return text, None
        if not found.tools_called or not found.tool_calls:
            return text, None
        calls = [ToolCall(id=new_id("call_"), function=FunctionCall(name=call.function.name,
                                                                     arguments=call.function.arguments))
                 for call in found.tool_calls]
        return (found.content or "").strip(), calls if self.parallel else calls[:1]


def auto_reader(use: ToolUse | None, parser: str | None, model: str, tokenizer: Any) -> AutoToolReader | None:
    """The parser reading an `auto` answer; None for the other choices, which need none."""
    return AutoToolReader.load(use, parser, model, tokenizer) if use is not None and use.choice == "auto" else None


def read_answer(use: ToolUse | None, reader: AutoToolReader | None, text: str,
                reason: str) -> tuple[str, list[ToolCall] | None, str]:
    """One choice's text, tool calls and finish reason as the chat answer gives them."""
    if use is None:
        return text, None, reason
    if reader is not None:
        content, calls = reader.read(text)
    else:
        calls = forced_calls(use, text)
        content = "" if calls else text
    return content, calls, finish_reason(use, calls, reason)
