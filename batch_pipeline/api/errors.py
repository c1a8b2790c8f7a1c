"""Every error the shim answers, in OpenAI's error shape: no stack trace or bare 500 reaches a client."""

import errno
import logging
import sqlite3

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from batch_pipeline.protocol.errors import ErrorBody, ErrorDetail

logger = logging.getLogger(__name__)

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


ERROR_RESPONSES = {code: {"model": ErrorBody} for code in (400, 401, 404, 409, 411, 413, 422, 500, 503, 507)}


def error_response(status: int, message: str, kind: str, param: str | None = None,
                   code: str | None = None) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(message=message, type=kind, param=param, code=code))
    return JSONResponse(status_code=status, content=body.model_dump())


def _is_disk_full(exc: BaseException | None) -> bool:
    return isinstance(exc, OSError) and exc.errno in _DISK_FULL


def _disk_full(request: Request, exc: OSError) -> JSONResponse:
    logger.error("%s %s: the disk is full (%s: %s)", request.method, request.url.path, exc.strerror, exc.filename)
    # Every file the shim writes is written atomically and upload spools are anonymous: nothing partial is left.
    return error_response(507, f"The server's disk is full ({exc.strerror}); nothing was kept. Free space on the "
                               "server, then retry.", "server_error", code="insufficient_storage")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ShimError)
    async def _shim_error(request: Request, exc: ShimError):
        return error_response(exc.status, exc.message, exc.kind, exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"][1:]) or None
        # 400 like OpenAI for any invalid parameter, body or query (the openai client raises BadRequestError).
        return error_response(400, f"Invalid '{param}': {first['msg']}", "invalid_request_error", param=param,
                              code="invalid_value")

    @app.exception_handler(sqlite3.Error)
    async def _database_error(request: Request, exc: sqlite3.Error):
        logger.error("%s %s: the shim's database failed: %s", request.method, request.url.path, exc)
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return error_response(507, f"The shim's database is full ({exc}); nothing was recorded. Free space on the "
                                       "server, then retry.", "server_error", code="insufficient_storage")
        return error_response(503, f"The shim's database is unavailable ({exc}); nothing was recorded. Retry shortly.",
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
        return error_response(exc.status_code, str(exc.detail), "invalid_request_error")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        return error_response(500, f"internal error ({type(exc).__name__}); see the shim's log", "server_error")


class ShimError(Exception):
    """An API error: HTTP status, OpenAI error type and code, and the offending parameter."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
