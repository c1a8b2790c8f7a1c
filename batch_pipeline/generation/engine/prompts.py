"""A request's prompt as token ids, the way vLLM's own OpenAI server builds it for each endpoint."""

from dataclasses import dataclass
from typing import Any

from batch_pipeline.generation.engine.interface import EngineRequest, UnsupportedRequest
from batch_pipeline.generation.sampling import prompt_messages
from batch_pipeline.intake.openai_format import COMPLETIONS_URL, prompt_list


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    text: str  # what `echo` hands back in front of the answer


def _fitting(ids: list[int], max_model_len: int, param: str) -> list[int]:
    if len(ids) >= max_model_len:
        raise UnsupportedRequest(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"{param} resulted in {len(ids)} tokens. Please reduce the length of the {param}.",
            param, code="context_length_exceeded")
    return ids


def _chat_prompt(tokenizer: Any, body: dict[str, Any], max_model_len: int) -> Prompt:
    try:
        text = tokenizer.apply_chat_template(prompt_messages(body), add_generation_prompt=True, tokenize=False)
    except UnsupportedRequest:
        raise
    except Exception as exc:  # the model's own chat template refused the conversation
        raise UnsupportedRequest(f"The chat template rejected the messages: {exc}", "messages") from None
    return Prompt(_fitting(tokenizer.encode(text, add_special_tokens=False), max_model_len, "messages"), text)


def _completion_prompt(tokenizer: Any, prompt: str | list[int], max_model_len: int) -> Prompt:
    if isinstance(prompt, str):
        return Prompt(_fitting(tokenizer.encode(prompt), max_model_len, "prompt"), prompt)
    if max(prompt) >= len(tokenizer):
        raise UnsupportedRequest(f"token id {max(prompt)} is outside the model's vocabulary of {len(tokenizer)}",
                                 "prompt", code="invalid_value")
    return Prompt(_fitting(prompt, max_model_len, "prompt"), tokenizer.decode(prompt))


def prompts(tokenizer: Any, request: EngineRequest, max_model_len: int) -> list[Prompt]:
    """One prompt per chat request; one per listed prompt for completions (each is answered)."""
    if request.url == COMPLETIONS_URL:
        return [_completion_prompt(tokenizer, prompt, max_model_len) for prompt in prompt_list(request.body["prompt"])]
    return [_chat_prompt(tokenizer, request.body, max_model_len)]
