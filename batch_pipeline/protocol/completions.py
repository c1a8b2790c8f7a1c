"""`/v1/completions` (legacy): its input body, the fields a request may set, and its answer body."""

import time
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field

from batch_pipeline.protocol.answers import EngineResult, TokenLogprob
from batch_pipeline.protocol.batch import InputLine, RequestBody, new_id
from batch_pipeline.protocol.endpoint import Endpoint
from batch_pipeline.protocol.errors import UnsupportedRequest
from batch_pipeline.protocol.sampling import MAX_N, SamplingFields
from batch_pipeline.protocol.texts import as_conversation, texts_field
from batch_pipeline.protocol.usage import GeneratedBody, usage_of

COMPLETIONS_URL = "/v1/completions"


class CompletionBody(RequestBody):
    prompt: Annotated[Any, AfterValidator(lambda value: texts_field(value, empty_text=True))]


class CompletionInputLine(InputLine):
    url: Literal["/v1/completions"]
    body: CompletionBody


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str


class TextCompletion(GeneratedBody):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]


MAX_COMPLETION_LOGPROBS = 5


# API default: legacy completions stop at 16 tokens unless asked (chat runs up to the context length).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


class CompletionSamplingFields(SamplingFields):
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


def _completion_logprobs(tokens: list[TokenLogprob] | None, offset: int) -> CompletionLogprobs | None:
    if tokens is None:
        return None
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token.token)
    return CompletionLogprobs(tokens=[t.token for t in tokens], token_logprobs=[t.logprob for t in tokens],
                              top_logprobs=[{a.token: a.logprob for a in t.top} for t in tokens],
                              text_offset=offsets)


def text_completion(model: str, result: EngineResult) -> TextCompletion:
    """`echo` puts the prompt in front of the text; log probability offsets count from the text's start."""
    return TextCompletion(
        id=new_id("cmpl-"), created=int(time.time()), model=model, usage=usage_of(result),
        choices=[CompletionChoice(index=i, text=c.prompt + c.text, finish_reason=c.finish_reason,
                                  logprobs=_completion_logprobs(c.logprobs, len(c.prompt)))
                 for i, c in enumerate(result.completions)],
    )


ENDPOINT = Endpoint(url=COMPLETIONS_URL, input_line=CompletionInputLine, answer_body=text_completion,
                    conversation=lambda body: as_conversation(body["prompt"]), text_field="prompt")
