"""The OpenAI Batch API's own lines: the envelope of an input line, and the output/error line shapes."""

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class InputLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    custom_id: str = Field(min_length=1)
    method: Literal["POST"]


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


class RequestBody(BaseModel):
    """Only what every request must have; other fields are checked per request at generation."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
