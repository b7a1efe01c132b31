"""Defences every HTTP route shares, so nothing a client sends makes a traceback.

- `tokens_match`: constant-time token comparison that never raises, whatever bytes
  arrive in a header (aiohttp hands non-UTF-8 header bytes over as lone surrogates).
- `read_body`: a request body read with a size cap and a deadline; the `BodyError` it
  raises becomes a JSON 413 / 408 in `guard_middleware`, which then drops the
  connection, so a client trickling a body cannot hold a connection for minutes.
- `guard_middleware`: the outermost middleware. It turns every error on every path —
  aiohttp's own 404/405/413, or a crash — into the JSON `{"error": {"code", "message"}}`,
  keeping headers such as `Allow` on a 405.

The listening socket with its connection cap is `listener.py`.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Any, Final

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

log = structlog.get_logger(__name__)


STATUS_CODES: Final = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    502: "upstream_error",
    503: "unavailable",
}
# Headers of an aiohttp HTTPException worth keeping on its JSON replacement.
_KEPT_HEADERS: Final = ("Allow", "Retry-After", "WWW-Authenticate")
_CHUNK: Final = 65536


class BodyError(Exception):
    """A request body we could not read: too large or too slow."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def json_error(
    status: int, code: str, message: str, *, field: str | None = None, **headers: str
) -> web.Response:
    """`{"error": {"code", "message"[, "field"]}}` with `status`."""
    error: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return web.json_response({"error": error}, status=status, headers=headers or None)


def tokens_match(given: str | None, want: str) -> bool:
    """`given == want` in constant time; False (never an exception) for any input."""
    if given is None:
        return False
    # surrogateescape turns the lone surrogates aiohttp made of undecodable bytes back
    # into those bytes; they simply do not match.
    return hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), want.encode("utf-8", "surrogateescape")
    )


async def read_body(request: web.Request, *, limit: int, timeout_s: float) -> bytes:
    """The whole body; `BodyError` 413 past `limit` bytes, 408 when not in within `timeout_s`."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyError(413, "body_too_large", f"body over {limit} bytes")
    parts: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while chunk := await request.content.read(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise BodyError(413, "body_too_large", f"body over {limit} bytes")
                parts.append(chunk)
    except TimeoutError:
        raise BodyError(
            408, "request_timeout", f"body not received within {timeout_s:g} s"
        ) from None
    return b"".join(parts)


def guard_middleware() -> Middleware:
    """The outermost middleware: JSON for every error, on every path."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except BodyError as err:
            # Answer, then drop the connection: aiohttp would otherwise keep reading
            # ("lingering") the rest of a slow or oversized body for another 10 s.
            resp = json_error(err.status, err.code, err.message)
            resp.force_close()
            await resp.prepare(request)
            await resp.write_eof()
            request.protocol.force_close()
            return resp
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {h: exc.headers[h] for h in _KEPT_HEADERS if h in exc.headers}
            return json_error(
                exc.status, STATUS_CODES.get(exc.status, "error"), exc.reason, **headers
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("HTTP handler crashed", path=request.path, method=request.method)
            return json_error(500, "internal", "internal error (logged)")

    return guard
