"""Tool calls read out of a vLLM answer: under `tool_choice: "auto"` only a model whose registry entry
names a vLLM tool parser (`tool_call_parser`) can serve a request with tools, its chat template showing
the tools and vLLM's parser reading the calls out of the text; under required/named the answer is the
calls' JSON (`protocol.tools`)."""

from dataclasses import dataclass
from typing import Any

from batch_pipeline.protocol.batch import new_id
from batch_pipeline.protocol.errors import UnsupportedRequest
from batch_pipeline.protocol.tools import FunctionCall, ToolCall, ToolUse, finish_reason, forced_calls


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
