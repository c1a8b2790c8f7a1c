"""Completions prompts and embeddings inputs: a text, a list of texts, token ids, or a list of those."""

from typing import Any


def is_token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(item) is int and item >= 0 for item in value)


def prompt_list(prompt: Any) -> list[str | list[int]]:
    """A completions `prompt` or embeddings `input` as the list of texts it stands for (each one is answered)."""
    return [prompt] if isinstance(prompt, str) or is_token_ids(prompt) else list(prompt)


def texts_field(value: Any, empty_text: bool) -> Any:
    """A string, a list of strings, an array of token ids or a list of such arrays."""
    texts = value if isinstance(value, list) and not is_token_ids(value) else [value]
    if texts and all((isinstance(t, str) and (empty_text or t)) or is_token_ids(t) for t in texts):
        return value
    raise ValueError("must be a string, a list of strings, an array of token ids or a list of such arrays "
                     f"(none of them empty{'' if empty_text else ', and no empty string'})")


def as_conversation(texts: Any) -> list[dict[str, Any]]:
    """Listed texts (token ids shown as such) as one user message, each on its own line."""
    return [{"role": "user", "content": "\n".join(
        text if isinstance(text, str) else f"[token ids {text}]" for text in prompt_list(texts))}]
