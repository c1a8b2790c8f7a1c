"""What the pipeline knows of one OpenAI endpoint; each endpoint module declares its own `ENDPOINT`."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from batch_pipeline.protocol.answers import EngineResult


@dataclass(frozen=True)
class Endpoint:
    url: str
    input_line: type[BaseModel]
    # The answer body of a request that succeeded, as OpenAI shapes it for this endpoint.
    answer_body: Callable[[str, EngineResult], BaseModel]
    # The conversation a request stands for, readable by people comparing or reviewing answers.
    conversation: Callable[[dict[str, Any]], list[dict[str, Any]]]
    # The body field whose texts are each answered on their own (a completions prompt list), if any.
    text_field: str | None = None
    # Answered by an embedding model (a vector per text), not a text generation model.
    embeds: bool = False
