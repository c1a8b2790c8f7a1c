"""A request's prompt as token ids, the way vLLM's own OpenAI server builds it for each endpoint."""

import json
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from batch_pipeline.protocol.answers import EngineRequest
from batch_pipeline.protocol.endpoints import ENDPOINTS
from batch_pipeline.protocol.errors import UnsupportedRequest, refusal
from batch_pipeline.protocol.texts import prompt_list
from batch_pipeline.protocol.tools import ToolCall, ToolUse


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    text: str  # what `echo` hands back in front of the answer


def _fitting(ids: list[int], max_model_len: int, param: str, room: int = 1) -> list[int]:
    """`room`: the tokens the answer needs beside the prompt (none for an embedding)."""
    if len(ids) + room > max_model_len:
        raise UnsupportedRequest(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"{param} resulted in {len(ids)} tokens. Please reduce the length of the {param}.",
            param, code="context_length_exceeded")
    return ids


def _chat_prompt(tokenizer: Any, body: dict[str, Any], max_model_len: int, tools: ToolUse | None) -> Prompt:
    """The request's tools go to the template (none when tool_choice is "none"), as vLLM's server hands them."""
    messages = prompt_messages(body)
    check_template_renders_calls(messages, str(getattr(tokenizer, "chat_template", None) or ""))
    try:
        text = tokenizer.apply_chat_template(messages, tools=tools.tools if tools is not None else None,
                                             add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # the model's own chat template refused the conversation
        raise UnsupportedRequest(f"The chat template rejected the messages: {exc}", "messages") from None
    return Prompt(_fitting(tokenizer.encode(text, add_special_tokens=False), max_model_len, "messages"), text)


def _text_prompt(tokenizer: Any, prompt: str | list[int], max_model_len: int, param: str, room: int) -> Prompt:
    if isinstance(prompt, str):
        return Prompt(_fitting(tokenizer.encode(prompt), max_model_len, param, room), prompt)
    if max(prompt) >= len(tokenizer):
        raise UnsupportedRequest(f"token id {max(prompt)} is outside the model's vocabulary of {len(tokenizer)}",
                                 param, code="invalid_value")
    return Prompt(_fitting(prompt, max_model_len, param, room), tokenizer.decode(prompt))


def prompts(tokenizer: Any, request: EngineRequest, max_model_len: int, tools: ToolUse | None = None) -> list[Prompt]:
    """One prompt per chat request, showing `tools` (the request's `tool_use`); one per listed prompt or
    input for completions and embeddings (each is answered)."""
    endpoint = ENDPOINTS[request.url]
    if (param := endpoint.text_field) is not None:
        room = 0 if endpoint.embeds else 1  # an embedding needs no room for an answer
        return [_text_prompt(tokenizer, text, max_model_len, param, room) for text in prompt_list(request.body[param])]
    return [_chat_prompt(tokenizer, request.body, max_model_len, tools)]


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
