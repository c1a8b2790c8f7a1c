"""A request's prompt as token ids, the way vLLM's own OpenAI server builds it for each endpoint."""

from dataclasses import dataclass
from typing import Any

from batch_pipeline.generation.engine.interface import EngineRequest, UnsupportedRequest
from batch_pipeline.generation.sampling import prompt_messages
from batch_pipeline.generation.tool_calls import ToolUse, check_template_renders_calls
from batch_pipeline.intake.openai_format import COMPLETIONS_URL, EMBEDDINGS_URL, prompt_list


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


# The body field holding an endpoint's texts, and the room its answer needs beside each.
_TEXT_FIELDS = {COMPLETIONS_URL: ("prompt", 1), EMBEDDINGS_URL: ("input", 0)}


def prompts(tokenizer: Any, request: EngineRequest, max_model_len: int, tools: ToolUse | None = None) -> list[Prompt]:
    """One prompt per chat request, showing `tools` (the request's `tool_use`); one per listed prompt or
    input for completions and embeddings (each is answered)."""
    if request.url in _TEXT_FIELDS:
        param, room = _TEXT_FIELDS[request.url]
        return [_text_prompt(tokenizer, text, max_model_len, param, room) for text in prompt_list(request.body[param])]
    return [_chat_prompt(tokenizer, request.body, max_model_len, tools)]
