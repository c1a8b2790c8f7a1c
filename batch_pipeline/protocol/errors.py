"""A request we cannot serve, and OpenAI's error body: one line's 400 naming the field, never a failed batch."""

from pydantic import BaseModel


class UnsupportedRequest(ValueError):
    """One request the engine cannot run: it becomes a 400 line naming the field, never a failed batch."""

    def __init__(self, message: str, param: str | None, code: str = "invalid_request"):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class ErrorDetail(BaseModel):
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


def error_body(message: str, param: str | None = None, code: str | None = None) -> ErrorBody:
    return ErrorBody(error=ErrorDetail(message=message, param=param, code=code))


_FORMAT_TYPES = {"text", "json_object", "json_schema"}


# The tags of tagged unions, by the field they follow in an error location.
_UNION_TAGS = {"response_format": _FORMAT_TYPES, "format": _FORMAT_TYPES, "tool_choice": {"mode", "function"}}


def _fields_only(loc: tuple) -> list[str | int]:
    """A pydantic error location without the union members it names (a union's tag, `str`,
    `list[...]`): what is left is the path of fields the user wrote."""
    parts = list(loc)
    return [part for index, part in enumerate(parts)
            if not ((index and part in _UNION_TAGS.get(parts[index - 1], ()))
                    or part == "str" or str(part).startswith("list["))]


def _param(parts: list[str | int]) -> str | None:
    """OpenAI's spelling of a field's path: `tools[0].function.name`."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in parts).lstrip(".") or None


def refusal(error: dict) -> UnsupportedRequest:
    """A request body's first validation error as the 400 that names its field."""
    param = _param(_fields_only(error["loc"]))
    if error["type"] == "extra_forbidden":
        return UnsupportedRequest(f"Unsupported parameter: '{param}' is not supported by this server.",
                                  param, code="unsupported_parameter")
    message = error["msg"].removeprefix("Value error, ")
    return UnsupportedRequest(f"Invalid value for '{param}': {message}", param, code="invalid_value")
