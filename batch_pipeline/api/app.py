"""The OpenAI-compatible HTTP shim: Files and Batches endpoints over the Dagster pipeline."""

import asyncio
import contextlib
import errno
import hmac
import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, BinaryIO, Literal
from urllib.parse import quote

import anyio
from dagster import DagsterInstance
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from starlette.exceptions import HTTPException as StarletteHTTPException

from batch_pipeline.api.metrics import ShimMetrics
from batch_pipeline.api.models import (
    BatchCreate,
    BatchList,
    BatchObject,
    FileDeleted,
    FileList,
    FileObject,
    Health,
    HealthStatus,
    ModelList,
    ModelObject,
    QueueView,
)
from batch_pipeline.api.origin import cross_site, host_allowed
from batch_pipeline.api.service import ShimError, ShimService, upload_expiry
from batch_pipeline.api.webhooks import WebhookConfig, WebhookSender
from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.registry import RegistryError
from batch_pipeline.core.settings import Settings
from batch_pipeline.core.slots import parse_slots
from batch_pipeline.core.storage import atomic_path
from batch_pipeline.protocol.errors import ErrorBody, ErrorDetail

logger = logging.getLogger(__name__)

_COPY_BLOCK = 1 << 20
# Multipart framing around the file; a body larger than the limit plus this cannot fit.
_MULTIPART_SLACK = 64 * 1024
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_ERROR_RESPONSES = {code: {"model": ErrorBody} for code in (400, 401, 404, 409, 411, 413, 422, 500, 503, 507)}


def _error(status: int, message: str, kind: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(message=message, type=kind, param=param, code=code))
    return JSONResponse(status_code=status, content=body.model_dump())


def _is_disk_full(exc: BaseException | None) -> bool:
    return isinstance(exc, OSError) and exc.errno in _DISK_FULL


def _disk_full(request: Request, exc: OSError) -> JSONResponse:
    logger.error("%s %s: the disk is full (%s: %s)", request.method, request.url.path, exc.strerror, exc.filename)
    # Every file the shim writes is written atomically and upload spools are anonymous: nothing partial is left.
    return _error(507, f"The server's disk is full ({exc.strerror}); nothing was kept. Free space on the server, "
                       "then retry.", "server_error", code="insufficient_storage")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ShimError)
    async def _shim_error(request: Request, exc: ShimError):
        return _error(exc.status, exc.message, exc.kind, exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"][1:]) or None
        # 400 like OpenAI for any invalid parameter, body or query (the openai client raises BadRequestError).
        return _error(400, f"Invalid '{param}': {first['msg']}", "invalid_request_error", param=param,
                      code="invalid_value")

    @app.exception_handler(sqlite3.Error)
    async def _database_error(request: Request, exc: sqlite3.Error):
        logger.error("%s %s: the shim's database failed: %s", request.method, request.url.path, exc)
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return _error(507, f"The shim's database is full ({exc}); nothing was recorded. Free space on the "
                               "server, then retry.", "server_error", code="insufficient_storage")
        return _error(503, f"The shim's database is unavailable ({exc}); nothing was recorded. Retry shortly.",
                      "server_error", code="database_unavailable")

    @app.exception_handler(OSError)
    async def _os_error(request: Request, exc: OSError):
        if not _is_disk_full(exc):
            raise exc  # on to the catch-all handler, which logs it
        return _disk_full(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if _is_disk_full(exc.__cause__):  # FastAPI reports a failure to spool an upload as a bad body
            return _disk_full(request, exc.__cause__)
        return _error(exc.status_code, str(exc.detail), "invalid_request_error")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        return _error(500, f"internal error ({type(exc).__name__}); see the shim's log", "server_error")


def _key_matches(header: str, key: str) -> bool:
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), key.encode())


def _body_too_large(limit: int) -> JSONResponse:
    return _error(413, f"Request body is larger than the limit of {limit} bytes", "invalid_request_error",
                  code="request_too_large")


async def _read_at_most(receive, limit: int) -> tuple[list[dict], bool]:
    """The body's messages, read until it ends or passes `limit` bytes; and whether it passed."""
    messages, size = [], 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, False
        size += len(message.get("body", b""))
        if size > limit:
            return messages, True
        if not message.get("more_body", False):
            return messages, False


def _replaying(messages: list[dict], receive):
    """A `receive` that hands out the messages already read, then the rest of the connection's."""
    pending = list(messages)

    async def replay():
        return pending.pop(0) if pending else await receive()

    return replay


class _Gatekeeper:
    """Checks where a request comes from, the API key and the body size before the app reads a body,
    so neither a web page nor an anonymous client nor an oversized upload can make the server spool
    data to disk, and no JSON body (whether or not it declares its length) can fill its memory."""

    def __init__(self, app, api_key: str | None, allowed_hosts: tuple[str, ...], max_upload_bytes: int,
                 max_json_bytes: int):
        self.app, self.api_key, self.allowed_hosts = app, api_key, allowed_hosts
        self.max_upload_bytes, self.max_json_bytes = max_upload_bytes, max_json_bytes

    def _refusal(self, scope, headers: dict[str, str]) -> JSONResponse | None:
        length = headers.get("content-length")
        if not host_allowed(headers.get("host"), self.allowed_hosts):
            return _error(400, "Invalid Host header: add the name clients use to BATCH_PIPELINE_SHIM_ALLOWED_HOSTS",
                          "invalid_request_error", code="invalid_host")
        if self.api_key is None and cross_site(headers):
            return _error(403, "Cross-site requests are refused (this server has no API key)",
                          "invalid_request_error", code="cross_site_request")
        authorized = self.api_key is None or _key_matches(headers.get("authorization", ""), self.api_key)
        scope.setdefault("state", {})["authorized"] = authorized
        if not authorized and scope["path"] != "/health":
            return _error(401, "Incorrect API key provided", "authentication_error", code="invalid_api_key")
        if scope["method"] == "POST" and scope["path"] == "/v1/files":
            if length is None or not length.isdigit():
                return _error(411, "Uploads need a Content-Length header", "invalid_request_error",
                              code="length_required")
            if int(length) > self.max_upload_bytes + _MULTIPART_SLACK:
                return _error(413, f"File is larger than the limit of {self.max_upload_bytes} bytes",
                              "invalid_request_error", param="file", code="file_too_large")
        elif length is not None and length.isdigit() and int(length) > self.max_json_bytes:
            return _body_too_large(self.max_json_bytes)
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is None and not (scope["method"] == "POST" and scope["path"] == "/v1/files"):
            # A chunked body declares no length: read it here, up to the limit, and replay it to the app.
            messages, too_large = await _read_at_most(receive, self.max_json_bytes)
            refusal = _body_too_large(self.max_json_bytes) if too_large else None
            receive = _replaying(messages, receive)
        if refusal is not None:
            return await refusal(scope, receive, send)
        return await self.app(scope, receive, send)


def _download(handle: BinaryIO, filename: str) -> StreamingResponse:
    """The bytes of a file already open: retention may delete its path before the response is sent."""
    quoted = quote(filename)
    disposition = f'attachment; filename="{filename}"' if quoted == filename else \
        f"attachment; filename*=utf-8''{quoted}"

    def blocks() -> Iterator[bytes]:
        with handle:
            while block := handle.read(_COPY_BLOCK):
                yield block

    return StreamingResponse(blocks(), media_type="application/jsonl", headers={
        "content-length": str(os.fstat(handle.fileno()).st_size), "content-disposition": disposition})


def _store_upload(upload: UploadFile, target: Path, limit: int) -> None:
    """Atomic, so an upload that is refused or fails (e.g. the disk fills up) leaves no file behind."""
    size = 0
    with atomic_path(target) as temp, temp.open("wb") as out:
        while block := upload.file.read(_COPY_BLOCK):
            size += len(block)
            if size > limit:
                raise ShimError(413, f"File is larger than the limit of {limit} bytes", param="file",
                                code="file_too_large")
            out.write(block)


def create_app(settings: Settings, instance: DagsterInstance | None = None,
               refresh_interval_seconds: float = 2.0, webhook_poll_seconds: float = 1.0) -> FastAPI:
    instance = instance or DagsterInstance.get()
    service = ShimService(DataLayout(settings.data_dir), instance, settings.shim_completion_window_seconds,
                          settings.max_bytes, webhooks=WebhookConfig.from_settings(settings),
                          postgres_url=settings.postgres_url)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async def refresh_forever():
            while True:  # refresh_active logs and records its failures (see /health) and never raises
                await anyio.to_thread.run_sync(service.refresh_active)
                await asyncio.sleep(refresh_interval_seconds)

        async def deliver_forever(sender: WebhookSender):
            while True:  # failed deliveries are recorded against their events; anything else is logged
                try:
                    await anyio.to_thread.run_sync(sender.deliver_due)
                except Exception:
                    logger.exception("delivering webhook events failed; trying again")
                await asyncio.sleep(webhook_poll_seconds)

        tasks = [asyncio.create_task(refresh_forever())]
        if service.webhooks is not None:
            tasks.append(asyncio.create_task(deliver_forever(service.webhooks)))
        yield
        for task in tasks:
            task.cancel()

    app = FastAPI(title="batch_pipeline OpenAI-compatible Batch API", lifespan=lifespan,
                  responses=_ERROR_RESPONSES)
    app.state.service = service
    _install_error_handlers(app)
    allowed_hosts = (*settings.allowed_hosts, settings.shim_host.lower())
    app.add_middleware(_Gatekeeper, api_key=settings.shim_api_key, allowed_hosts=allowed_hosts,
                       max_upload_bytes=settings.max_bytes,
                       max_json_bytes=settings.shim_max_json_bytes)

    @app.get("/health", response_model=Health | HealthStatus)
    def health(request: Request) -> Health | HealthStatus:
        """Without the API key only up or degraded: failures name batches and carry error text."""
        health = _health()
        return health if request.state.authorized else HealthStatus(status=health.status)

    def _health() -> Health:
        failures = service.refresh_failures()
        webhook_failures = service.webhooks.failures() if service.webhooks else []
        try:
            instance.get_run_records(limit=1)
        except Exception as exc:  # any storage failure means the instance is not usable
            return Health(status="degraded", dagster_instance="unreachable", detail=type(exc).__name__,
                          refresh_failures=failures, webhook_failures=webhook_failures)
        return Health(status="degraded" if failures or webhook_failures else "ok", dagster_instance="ok",
                      refresh_failures=failures, webhook_failures=webhook_failures)

    @app.post("/v1/files", response_model=FileObject)
    def upload_file(file: Annotated[UploadFile, File()], purpose: Annotated[str, Form()],
                    expires_anchor: Annotated[str | None, Form(alias="expires_after[anchor]")] = None,
                    expires_seconds: Annotated[str | None, Form(alias="expires_after[seconds]")] = None):
        if purpose != "batch":
            raise ShimError(400, f"Unsupported purpose '{purpose}': this server accepts 'batch'", param="purpose",
                            code="invalid_purpose")
        expires_after = upload_expiry(expires_anchor, expires_seconds)
        file_id, path = service.new_upload_path()
        _store_upload(file, path, service.max_upload_bytes)
        try:
            # The client's name is metadata only; the bytes live under our own id.
            return service.add_file(file_id, path, Path(file.filename or "upload.jsonl").name[:255] or "upload.jsonl",
                                    purpose, expires_after_seconds=expires_after)
        except BaseException:
            path.unlink(missing_ok=True)  # bytes no record points to would never be deleted
            raise

    @app.get("/v1/files", response_model=FileList)
    def list_files(purpose: str | None = None, limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
                   after: str | None = None, order: Literal["asc", "desc"] = "desc"):
        page = service.files(purpose, limit + 1, after, newest_first=order == "desc")
        data = page[:limit]
        return FileList(data=data, has_more=len(page) > limit, first_id=data[0].id if data else None,
                        last_id=data[-1].id if data else None)

    @app.get("/v1/files/{file_id}", response_model=FileObject)
    def retrieve_file(file_id: str):
        return service.file(file_id)[0]

    @app.get("/v1/files/{file_id}/content",
             responses={200: {"content": {"application/jsonl": {}}}})
    def file_content(file_id: str):
        file, path = service.file(file_id)
        try:  # once open, the bytes stay readable even if retention deletes the file meanwhile
            handle = path.open("rb")
        except FileNotFoundError:
            raise ShimError(404, f"No such File object: {file_id}", param="id", code="file_not_found") from None
        return _download(handle, file.filename)

    @app.delete("/v1/files/{file_id}", response_model=FileDeleted)
    def delete_file(file_id: str):
        service.delete_file(file_id)
        return FileDeleted(id=file_id)

    @app.post("/v1/batches", response_model=BatchObject)
    def create_batch(body: BatchCreate):
        try:
            return service.create_batch(body)
        except RegistryError as exc:
            raise ShimError(500, str(exc), kind="server_error") from None

    @app.get("/v1/batches", response_model=BatchList)
    def list_batches(limit: Annotated[int, Query(ge=1, le=100)] = 20, after: str | None = None):
        data, has_more = service.batches(limit, after)
        return BatchList(data=data, has_more=has_more, first_id=data[0].id if data else None,
                         last_id=data[-1].id if data else None)

    @app.get("/v1/batches/{batch_id}", response_model=BatchObject)
    def retrieve_batch(batch_id: str):
        return service.batch(batch_id)

    @app.post("/v1/batches/{batch_id}/cancel", response_model=BatchObject)
    def cancel_batch(batch_id: str):
        return service.cancel(batch_id)

    @app.get("/v1/models", response_model=ModelList)
    def list_models():
        try:
            registry = service.registry()
        except RegistryError as exc:
            raise ShimError(500, str(exc), kind="server_error") from None
        created = int(service.layout.registry.stat().st_mtime)
        return ModelList(data=[ModelObject(id=name, created=created) for name in registry.names()])

    @app.get("/v1/queue", response_model=QueueView)
    def queue():
        return QueueView(data=service.queue())

    shim_metrics = ShimMetrics(service, parse_slots(settings.gpu_slots))

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics():
        return PlainTextResponse(shim_metrics.render(), media_type=CONTENT_TYPE_PLAIN_0_0_4)

    return app
