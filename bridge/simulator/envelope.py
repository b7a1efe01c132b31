"""The vendor's response envelope, and the error that handlers raise to answer with one."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from bridge import __version__

OK_CODE = "S00000"
BUILD = f"fleet-bridge-simulator/{__version__}"

# The vendor's error codes are not public; these are ours, shaped like S00000.
BAD_PARAMETER = "E40001"
BAD_API_KEY = "E40101"
BAD_TOKEN = "E40102"  # noqa: S105  (an error code, not a secret)
BAD_CREDENTIALS = "E40103"
NOT_FOUND = "E40401"
RATE_LIMITED = "E42901"
INTERNAL = "E50001"
REFUSED = "E50002"
UNAVAILABLE = "E50301"


class ApiError(Exception):
    """Answer with `result: false`, this HTTP status and vendor code."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def bad_parameter(message: str) -> ApiError:
    return ApiError(400, BAD_PARAMETER, message)


def envelope(
    uq: str,
    data: Any,
    *,
    result: bool = True,
    code: str = OK_CODE,
    message: str = "OK",
    count: int | None = None,
) -> dict[str, Any]:
    """`{uq, doc_version, result, code, message, build, [count], data}`."""
    body: dict[str, Any] = {
        "uq": uq,
        "doc_version": "latest",
        "result": result,
        "code": code,
        "message": message,
        "build": BUILD,
    }
    if count is not None:
        body["count"] = count
    body["data"] = data
    return body


def ok(uq: str, data: Any, *, count: int | None = None) -> web.Response:
    """HTTP 200 with a successful envelope."""
    return web.json_response(envelope(uq, data, count=count))


def error(uq: str, err: ApiError) -> web.Response:
    """The envelope for `err`, with its status and headers."""
    body = envelope(uq, None, result=False, code=err.code, message=err.message)
    return web.json_response(body, status=err.status, headers=err.headers)
