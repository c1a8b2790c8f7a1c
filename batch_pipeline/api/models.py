"""OpenAI Files and Batches API objects, with the field names and types the official client models."""

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from batch_pipeline.core.costs import BatchCost
from batch_pipeline.intake.validation import LineError
from batch_pipeline.protocol.endpoints import SUPPORTED_URLS
from batch_pipeline.protocol.usage import TokenUsage as BatchUsage
from batch_pipeline.queue.view import QueueCell

MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
# OpenAI's bounds for a file's lifetime after its anchor: one hour to 30 days.
MIN_EXPIRY_SECONDS = 3600
MAX_EXPIRY_SECONDS = 30 * 24 * 3600

BatchStatus = Literal["validating", "failed", "in_progress", "finalizing", "completed", "expired",
                      "cancelling", "cancelled"]
TERMINAL_STATUSES = frozenset({"failed", "completed", "expired", "cancelled"})


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: Literal["batch", "batch_output"]
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class ExpiresAfter(BaseModel):
    """When a file is deleted: `seconds` after its creation (the only anchor OpenAI offers)."""

    anchor: Literal["created_at"]
    seconds: int = Field(ge=MIN_EXPIRY_SECONDS, le=MAX_EXPIRY_SECONDS)


class BatchCreate(BaseModel):
    input_file_id: str = Field(min_length=1)
    endpoint: Literal[SUPPORTED_URLS]  # type: ignore[valid-type]
    # OpenAI's only value is "24h"; "1h" and "7d" are ours (api.forecasts).
    completion_window: Literal["1h", "24h", "7d"]
    metadata: dict[str, str] | None = None
    # Applies to the output and error files the batch produces, from their own creation.
    output_expires_after: ExpiresAfter | None = None

    @field_validator("metadata")
    @classmethod
    def _check_metadata(cls, metadata: dict[str, str] | None) -> dict[str, str] | None:
        if metadata is None:
            return None
        if len(metadata) > MAX_METADATA_PAIRS:
            raise ValueError(f"at most {MAX_METADATA_PAIRS} key-value pairs, got {len(metadata)}")
        for key, value in metadata.items():
            if len(key) > MAX_METADATA_KEY_CHARS:
                raise ValueError(f"key '{key[:MAX_METADATA_KEY_CHARS]}...' is longer than "
                                 f"{MAX_METADATA_KEY_CHARS} characters")
            if len(value) > MAX_METADATA_VALUE_CHARS:
                raise ValueError(f"the value of '{key}' is longer than {MAX_METADATA_VALUE_CHARS} characters")
        return metadata


class RequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0




class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[LineError]


class BatchObject(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    model: str | None = None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = RequestCounts()
    metadata: dict[str, str] | None = None
    errors: BatchErrors | None = None
    usage: BatchUsage = BatchUsage()
    # Ours: the GPU queue's forecast for an active batch (api.forecasts), and why it may miss its window.
    expected_start_at: int | None = None
    expected_completion_at: int | None = None
    warnings: list[str] | None = None
    # Ours, once completed: accelerator time and what the tokens would cost on hosted batch APIs.
    cost: BatchCost | None = None


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchObject]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "batch_pipeline"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class QueueView(BaseModel):
    object: Literal["list"] = "list"
    data: list[QueueCell]


class RefreshFailure(BaseModel):
    batch_id: str | None  # None: the refresher as a whole (listing the batches, stopping abandoned runs)
    message: str


WebhookEventType = Literal["batch.completed", "batch.failed", "batch.expired", "batch.cancelled"]


class WebhookEventData(BaseModel):
    id: str  # the batch's id


class WebhookEvent(BaseModel):
    """The body POSTed to the webhook URL, shaped like OpenAI's batch events."""

    id: str
    object: Literal["event"] = "event"
    type: WebhookEventType
    created_at: int  # when the batch reached the status the event announces
    data: WebhookEventData


class WebhookFailure(BaseModel):
    event_id: str
    batch_id: str
    type: WebhookEventType
    attempts: int
    gave_up: bool  # False: another attempt is scheduled
    message: str


class RefreshHealth(BaseModel):
    """The background refresher (api.refresher): a pass that does not return is a hung call."""

    age_seconds: float  # since its last pass completed (since start-up before the first)
    stalled: bool  # that age is over the limit
    stall_limit_seconds: float


class HealthStatus(BaseModel):
    """What /health tells a caller without the API key."""

    status: Literal["ok", "degraded"]


class Health(HealthStatus):
    shim: Literal["ok"] = "ok"
    dagster_instance: Literal["ok", "unreachable"]
    detail: str | None = None
    refresh: RefreshHealth
    # Batches the background refresher cannot bring up to date; each is retried at every refresh.
    refresh_failures: list[RefreshFailure] = []
    # Webhook events whose last delivery failed: still being retried, or given up recently.
    webhook_failures: list[WebhookFailure] = []

