"""Maps a chat request body's sampling fields to vLLM SamplingParams keyword arguments.

A field we cannot honour fails that one request with a 400 naming the field, never the batch.
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from batch_pipeline.core.registry import SamplingDefaults
from batch_pipeline.generation.engine.interface import UnsupportedRequest

MAX_STOP_SEQUENCES = 4
MAX_N = 16


class _TextFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]


class ChatSamplingFields(BaseModel):
    """Every body field we accept; anything else is refused by name."""

    model_config = ConfigDict(extra="forbid")

    model: str
    messages: list[Any]
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    # vLLM extensions, as its OpenAI server accepts them.
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0)
    min_tokens: int | None = Field(default=None, ge=0)
    # Accepted and without effect on generation, as in OpenAI's batch API.
    user: str | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    stream: Literal[False] | None = None
    response_format: _TextFormat | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop: str | list[str] | None) -> str | list[str] | None:
        sequences = [stop] if isinstance(stop, str) else stop or []
        if len(sequences) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if any(sequence == "" for sequence in sequences):
            raise ValueError("stop sequences must not be empty")
        return stop


_PASSTHROUGH = ("temperature", "top_p", "n", "seed", "presence_penalty", "frequency_penalty",
                "top_k", "min_p", "repetition_penalty", "min_tokens")


def _refusal(error: dict) -> UnsupportedRequest:
    param = ".".join(str(part) for part in error["loc"]) or None
    if error["type"] == "extra_forbidden":
        return UnsupportedRequest(f"Unsupported parameter: '{param}' is not supported by this server.",
                                  param, code="unsupported_parameter")
    return UnsupportedRequest(f"Invalid value for '{param}': {error['msg']}", param, code="invalid_value")


def _check_combination(kwargs: dict[str, Any]) -> None:
    if kwargs.get("n", 1) > 1 and kwargs.get("temperature", 1.0) == 0:
        raise UnsupportedRequest("'n' greater than 1 needs a temperature above 0 (greedy decoding gives "
                                 "one answer)", "n", code="invalid_value")
    if "min_tokens" in kwargs and "max_tokens" in kwargs and kwargs["min_tokens"] > kwargs["max_tokens"]:
        raise UnsupportedRequest("'min_tokens' must not exceed 'max_tokens'", "min_tokens", code="invalid_value")


def sampling_kwargs(body: dict[str, Any], defaults: SamplingDefaults) -> dict[str, Any]:
    """Request fields over registry defaults; raises UnsupportedRequest naming the offending field."""
    try:
        fields = ChatSamplingFields.model_validate(body)
    except ValidationError as exc:
        raise _refusal(exc.errors()[0]) from None
    kwargs: dict[str, Any] = defaults.model_dump(exclude_none=True)
    for name in _PASSTHROUGH:
        value = getattr(fields, name)
        if name in fields.model_fields_set and value is not None:
            kwargs[name] = value
    max_tokens = fields.max_completion_tokens or fields.max_tokens
    if max_tokens is not None:
        kwargs["max_tokens"] = max_tokens
    if fields.stop is not None:
        kwargs["stop"] = [fields.stop] if isinstance(fields.stop, str) else fields.stop
    _check_combination(kwargs)
    if fields.logit_bias:
        try:
            kwargs["logit_bias"] = {int(token): bias for token, bias in fields.logit_bias.items()}
        except ValueError:
            raise UnsupportedRequest("Invalid value for 'logit_bias': keys must be token ids",
                                     "logit_bias", code="invalid_value") from None
    return kwargs


_MESSAGE_KEYS = {"role", "content", "name"}


def prompt_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Messages for a text-only chat template: content parts are joined; tool calls and non-text
    parts are refused rather than silently dropped."""
    messages = []
    for index, message in enumerate(body["messages"]):
        for key in sorted(set(message) - _MESSAGE_KEYS):
            raise UnsupportedRequest(f"Unsupported message field '{key}': this server runs text-only chat",
                                     f"messages[{index}].{key}", code="unsupported_parameter")
        if message["role"] == "tool":
            raise UnsupportedRequest("Tool messages are not supported by this server",
                                     f"messages[{index}].role", code="unsupported_parameter")
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
        messages.append({"role": message["role"], "content": content or ""})
    return messages
