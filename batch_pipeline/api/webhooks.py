"""Batch events POSTed to a configured URL, signed the way OpenAI signs its webhooks (Standard Webhooks).

Events live in the shim's store (an outbox written together with the transition they announce), so
each transition is announced once even if the shim restarts before delivering it. A sender claims an
event for a lease before posting it, so API replicas sharing the outbox never post one event at once.
An event is marked
delivered only after a 2xx answer; one lost between the receiver's 2xx and that mark is sent again with
the same `webhook-id`, which Standard Webhooks receivers use to drop repeats. Failed deliveries are
retried with exponential backoff, a bounded number of times, then given up (logged, and shown by /health).
"""

import base64
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from batch_pipeline.api.models import (
    TERMINAL_STATUSES,
    BatchObject,
    WebhookEvent,
    WebhookEventData,
    WebhookFailure,
)
from batch_pipeline.api.store import ShimStore
from batch_pipeline.core.redaction import redact_text, redact_url
from batch_pipeline.core.settings import Settings
from batch_pipeline.protocol.batch import new_id

logger = logging.getLogger(__name__)

_SECRET_PREFIX = "whsec_"
# Given-up events stay in /health this long, so an outage is seen without marking the shim degraded forever.
GAVE_UP_SHOWN_SECONDS = 24 * 3600
# One pass claims at most this many events, so it ends and the next starts on time.
_EVENTS_PER_PASS = 100
# A claim outlives the post's timeout by this much; then a sender that died holding it is passed over.
_CLAIM_MARGIN_SECONDS = 30.0
# Each terminal status, the event announcing it and the batch field holding when it was reached.
_EVENTS = {"completed": ("batch.completed", "completed_at"), "failed": ("batch.failed", "failed_at"),
           "expired": ("batch.expired", "expired_at"), "cancelled": ("batch.cancelled", "cancelled_at")}


def decode_secret(secret: str) -> bytes:
    """The HMAC key: "whsec_" + base64 decodes to its bytes; any other string is its own UTF-8 bytes
    (what the openai client's `verify_signature` does with each)."""
    if not secret.startswith(_SECRET_PREFIX):
        return secret.encode()
    return base64.b64decode(secret[len(_SECRET_PREFIX):], validate=True)  # Settings checked it decodes


def signature_headers(key: bytes, event_id: str, timestamp: int, body: str) -> dict[str, str]:
    signed = hmac.new(key, f"{event_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return {"webhook-id": event_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": "v1," + base64.b64encode(signed).decode(), "content-type": "application/json"}


def transition_event(before: BatchObject, after: BatchObject) -> WebhookEvent | None:
    """The event announcing `after`'s status, when the batch has just reached a terminal one."""
    if before.status in TERMINAL_STATUSES or after.status not in TERMINAL_STATUSES:
        return None
    event_type, stamp = _EVENTS[after.status]
    return WebhookEvent(id=new_id("evt_"), type=event_type, created_at=getattr(after, stamp) or int(time.time()),
                        data=WebhookEventData(id=after.id))


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    key: bytes
    max_attempts: int = 10
    backoff_seconds: float = 2.0
    max_backoff_seconds: float = 900.0
    timeout_seconds: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> "WebhookConfig | None":
        if settings.webhook_url is None:
            return None
        return cls(url=settings.webhook_url, key=decode_secret(settings.webhook_secret),
                   max_attempts=settings.webhook_max_attempts, backoff_seconds=settings.webhook_backoff_seconds,
                   max_backoff_seconds=settings.webhook_max_backoff_seconds,
                   timeout_seconds=settings.webhook_timeout_seconds)

    def retry_delay(self, attempts: int) -> float:
        """After the `attempts`-th failed attempt: backoff, 2 x backoff, 4 x backoff, ... up to the cap."""
        return min(self.backoff_seconds * 2 ** (attempts - 1), self.max_backoff_seconds)


Post = Callable[[str, bytes, dict[str, str], float], int]


class _RedactingFilter(logging.Filter):
    """httpx logs every request's full URL (at INFO): the receiver's credentials are masked first."""

    def __init__(self, url: str):
        super().__init__()
        self.url = url

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact_text(record.getMessage(), self.url), ()
        return True


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
    return httpx.post(url, content=body, headers=headers, timeout=timeout, follow_redirects=False).status_code


class WebhookSender:
    """Delivers due events from the outbox; called by one background loop of the shim."""

    def __init__(self, store: ShimStore, config: WebhookConfig, post: Post = _post):
        self.store, self.config, self._post = store, config, post
        self._shown_url = redact_url(config.url)  # a token in the URL never reaches a log
        httpx_log = logging.getLogger("httpx")
        if not any(isinstance(known, _RedactingFilter) and known.url == config.url for known in httpx_log.filters):
            httpx_log.addFilter(_RedactingFilter(config.url))

    def deliver_due(self, now: float | None = None) -> int:
        """Tries every event whose attempt is due, each claimed first; returns how many were delivered.
        Never raises for a receiver's failure: each is recorded against its event."""
        delivered, lease = 0, self.config.timeout_seconds + _CLAIM_MARGIN_SECONDS
        for _ in range(_EVENTS_PER_PASS):
            claimed = self.store.claim_webhook_event(time.time() if now is None else now, lease)
            if claimed is None:
                break
            event_id, body, attempts = claimed
            try:
                delivered += self._attempt(event_id, body, attempts + 1)
            except BaseException:
                self.store.release_webhook_claim(event_id)  # its outcome was not recorded: due again
                raise
        return delivered

    def _attempt(self, event_id: str, body: str, attempt: int) -> bool:
        # Signed afresh at each attempt: receivers refuse timestamps older than a few minutes.
        now = time.time()
        headers = signature_headers(self.config.key, event_id, int(now), body)
        try:
            status = self._post(self.config.url, body.encode(), headers, self.config.timeout_seconds)
            error = None if 200 <= status < 300 else f"the receiver answered HTTP {status}"
        except Exception as exc:  # refused, timed out, bad URL...: recorded against the event, never raised
            error = redact_text(f"{type(exc).__name__}: {exc}", self.config.url)  # shown by logs and /health
        if error is None:
            self.store.webhook_delivered(event_id, now)
            return True
        if attempt >= self.config.max_attempts:
            logger.error("webhook %s to %s: attempt %d of %d failed (%s); giving up", event_id, self._shown_url,
                         attempt, self.config.max_attempts, error)
            self.store.webhook_failed(event_id, now, error, retry_at=None)
        else:
            delay = self.config.retry_delay(attempt)
            logger.warning("webhook %s to %s: attempt %d of %d failed (%s); retrying in %.0f s", event_id,
                           self._shown_url, attempt, self.config.max_attempts, error, delay)
            self.store.webhook_failed(event_id, now, error, retry_at=now + delay)
        return False

    def failures(self, now: float | None = None) -> list[WebhookFailure]:
        since = (time.time() if now is None else now) - GAVE_UP_SHOWN_SECONDS
        return [WebhookFailure(event_id=row["id"], batch_id=row["batch_id"], type=row["type"],
                               attempts=row["attempts"], gave_up=row["gave_up_at"] is not None,
                               message=row["last_error"])
                for row in self.store.failing_webhook_events(since)]
