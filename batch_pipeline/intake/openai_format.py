"""OpenAI Batch API wire formats: input lines, output/error lines, and the answer body of each endpoint."""

import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

CHAT_COMPLETIONS_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"
RESPONSES_URL = "/v1/responses"
EMBEDDINGS_URL = "/v1/embeddings"
SUPPORTED_URLS = (CHAT_COMPLETIONS_URL, COMPLETIONS_URL, RESPONSES_URL, EMBEDDINGS_URL)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class _Body(BaseModel):
    """Only what every request must have; other fields are checked per request at generation."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)


class ChatBody(_Body):
    messages: list[ChatMessage] = Field(min_length=1)


def _is_token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(item) is int and item >= 0 for item in value)


def prompt_list(prompt: Any) -> list[str | list[int]]:
    """A completions `prompt` or embeddings `input` as the list of texts it stands for (each one is answered)."""
    return [prompt] if isinstance(prompt, str) or _is_token_ids(prompt) else list(prompt)


def _texts(value: Any, empty_text: bool) -> Any:
    """A string, a list of strings, an array of token ids or a list of such arrays."""
    texts = value if isinstance(value, list) and not _is_token_ids(value) else [value]
    if texts and all((isinstance(t, str) and (empty_text or t)) or _is_token_ids(t) for t in texts):
        return value
    raise ValueError("must be a string, a list of strings, an array of token ids or a list of such arrays "
                     f"(none of them empty{'' if empty_text else ', and no empty string'})")


class CompletionBody(_Body):
    prompt: Annotated[Any, AfterValidator(lambda value: _texts(value, empty_text=True))]


class EmbeddingBody(_Body):
    # API limit: OpenAI refuses empty strings as embedding input.
    input: Annotated[Any, AfterValidator(lambda value: _texts(value, empty_text=False))]


class ResponsesBody(_Body):
    input: str | Annotated[list[dict[str, Any]], Field(min_length=1)]


class _InputLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    custom_id: str = Field(min_length=1)
    method: Literal["POST"]


class ChatInputLine(_InputLine):
    url: Literal["/v1/chat/completions"]
    body: ChatBody


class CompletionInputLine(_InputLine):
    url: Literal["/v1/completions"]
    body: CompletionBody


class ResponsesInputLine(_InputLine):
    url: Literal["/v1/responses"]
    body: ResponsesBody


class EmbeddingInputLine(_InputLine):
    url: Literal["/v1/embeddings"]
    body: EmbeddingBody


# The url picks the body's shape, so a body error names the field its endpoint expects.
BatchInputLine = Annotated[ChatInputLine | CompletionInputLine | ResponsesInputLine | EmbeddingInputLine,
                           Field(discriminator="url")]


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = PromptTokensDetails()


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobContent(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprobContent]
    refusal: None = None


class FunctionCall(BaseModel):
    name: str
    arguments: str  # a JSON object, as text (OpenAI's shape)


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    # Left out when no tool was called, as OpenAI leaves it out.
    tool_calls: list[ToolCall] | None = Field(default=None, exclude_if=lambda calls: calls is None)


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str


class _GeneratedBody(BaseModel):
    id: str
    created: int
    model: str
    usage: Usage
    system_fingerprint: str | None = None


class ChatCompletion(_GeneratedBody):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[Choice]


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


class TextCompletion(_GeneratedBody):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]


class ErrorDetail(BaseModel):
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class ResponseEnvelope(BaseModel):
    status_code: int
    request_id: str
    body: dict[str, Any]


class BatchLineError(BaseModel):
    code: str
    message: str


class BatchOutputLine(BaseModel):
    id: str
    custom_id: str
    response: ResponseEnvelope | None
    error: BatchLineError | None = None


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex}"


def error_body(message: str, param: str | None = None, code: str | None = None) -> ErrorBody:
    return ErrorBody(error=ErrorDetail(message=message, param=param, code=code))


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = []


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: Literal["completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class TokenUsage(BaseModel):
    """`usage` of a Responses API answer and of a batch object alike."""

    input_tokens: int = 0
    input_tokens_details: InputTokensDetails = InputTokensDetails()
    output_tokens: int = 0
    output_tokens_details: OutputTokensDetails = OutputTokensDetails()
    total_tokens: int = 0


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseObject(BaseModel):
    """The Responses API's `response` object, with the request's own settings echoed as OpenAI does."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["completed", "incomplete"]
    error: None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputMessage]
    parallel_tool_calls: bool = False
    temperature: float | None = None
    top_p: float | None = None
    text: dict[str, Any] = {"format": {"type": "text"}}
    tool_choice: Literal["none"] = "none"
    tools: list[Any] = []
    truncation: Literal["disabled"] = "disabled"
    usage: TokenUsage
    metadata: dict[str, str] = {}


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # a string when `encoding_format` is base64 (little-endian float32)


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
