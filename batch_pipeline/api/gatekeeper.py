"""Checks the Host, the origin, the API key and the body size before the app reads a body."""

import hmac

from fastapi.responses import JSONResponse

from batch_pipeline.api.errors import error_response
from batch_pipeline.api.origin import cross_site, host_allowed

# Multipart framing around the file; a body larger than the limit plus this cannot fit.
_MULTIPART_SLACK = 64 * 1024


def _key_matches(header: str, key: str) -> bool:
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), key.encode())


def _body_too_large(limit: int) -> JSONResponse:
    return error_response(413, f"Request body is larger than the limit of {limit} bytes", "invalid_request_error",
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


class Gatekeeper:
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
            return error_response(400, "Invalid Host header: add the name clients use to "
                                  "BATCH_PIPELINE_SHIM_ALLOWED_HOSTS", "invalid_request_error", code="invalid_host")
        if self.api_key is None and cross_site(headers):
            return error_response(403, "Cross-site requests are refused (this server has no API key)",
                                  "invalid_request_error", code="cross_site_request")
        authorized = self.api_key is None or _key_matches(headers.get("authorization", ""), self.api_key)
        scope.setdefault("state", {})["authorized"] = authorized
        if not authorized and scope["path"] != "/health":
            return error_response(401, "Incorrect API key provided", "authentication_error", code="invalid_api_key")
        if scope["method"] == "POST" and scope["path"] == "/v1/files":
            if length is None or not length.isdigit():
                return error_response(411, "Uploads need a Content-Length header", "invalid_request_error",
                                      code="length_required")
            if int(length) > self.max_upload_bytes + _MULTIPART_SLACK:
                return error_response(413, f"File is larger than the limit of {self.max_upload_bytes} bytes",
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
