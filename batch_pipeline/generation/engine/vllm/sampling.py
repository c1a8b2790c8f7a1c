"""Maps a chat or completions request body's sampling fields (checked under OpenAI's names by the
endpoint's fields model) to vLLM SamplingParams keyword arguments.

A field we cannot honour fails that one request with a 400 naming the field, never the batch.
"""

from typing import Any

from pydantic import ValidationError

from batch_pipeline.core.registry import SamplingDefaults
from batch_pipeline.protocol.chat import CHAT_COMPLETIONS_URL, ChatSamplingFields
from batch_pipeline.protocol.completions import (
    COMPLETIONS_DEFAULT_MAX_TOKENS,
    COMPLETIONS_URL,
    CompletionSamplingFields,
)
from batch_pipeline.protocol.errors import UnsupportedRequest, refusal
from batch_pipeline.protocol.sampling import SamplingFields

_FIELDS_BY_URL: dict[str, type[SamplingFields]] = {
    CHAT_COMPLETIONS_URL: ChatSamplingFields,
    COMPLETIONS_URL: CompletionSamplingFields,
}
_PASSTHROUGH = ("temperature", "top_p", "n", "seed", "presence_penalty", "frequency_penalty",
                "top_k", "min_p", "repetition_penalty", "min_tokens")


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


