"""Reading the vendor's response envelope into data or a typed error (pure).

Every VisionMax endpoint answers `{uq, doc_version, result, code, message, build,
data[, count]}`. A response is a success only when the HTTP status is 2xx,
`result` is true and `code` is `S00000`; a few endpoints answer a bare object
without the envelope, which counts as success on 2xx (UPSTREAM.md, "Common").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bridge.upstream.errors import (
    UpstreamApiError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from bridge.vendor_text import loads_clean

SUCCESS_CODE = "S00000"
_MAX_MESSAGE = 500  # vendor messages end up in logs and errors; keep them bounded

# Every envelope opens with its per-response id: `{"uq": "…", …}`. Only that leading
# field is left out of a page's digest; an answer laid out otherwise is hashed whole
# (and then only repeats when the vendor sends the very same bytes).
_LEADING_UQ = re.compile(rb'\A\s*\{\s*"uq"\s*:\s*"[^"\\]*"\s*,')


@dataclass(frozen=True)
class Reply:
    """A successful answer: the whole JSON object and its payload."""

    body: dict[str, Any]  # the envelope, or the bare object ({} for a bare array)
    data: Any  # the envelope's `data`, or the bare object/array itself
    enveloped: bool
    status: int
    # A list page read with a page memo (`UpstreamClient.iter_event_pages`): its
    # `page_digest`, and for a page the memo knew, (entries, vendor total) instead of
    # a parse (`data` is then None).
    digest: int | None = None
    known: tuple[int, int | None] | None = None
    raw: bytes | None = None  # a known page's answer, should it have to be parsed after all


def page_digest(raw: bytes) -> int:
    """A hash of an answer's bytes without the envelope's per-response `uq` field.

    Equal digests mean equal documents but for `uq` (a 64-bit SipHash collision
    apart), so an answer with a known digest needs no parse to know what it holds.
    """
    match = _LEADING_UQ.match(raw)
    if match is None:
        return hash(raw)
    # `{` stands in for the field, so `{"uq":"a","x":…` and `{"x":…` never collide.
    return hash((b"{", raw[match.end() :]))


def _text(value: object) -> str | None:
    if value is None:
        return None
    return str(value)[:_MAX_MESSAGE]


def parse_reply(endpoint: str, status: int, raw: bytes, retry_after: float | None) -> Reply:
    """Turn one HTTP answer into a `Reply`, or raise the matching `UpstreamError`."""
    try:
        # Cleaned once here, for every endpoint: what leaves this module encodes.
        parsed: Any = loads_clean(raw) if raw.strip() else None
        decoded = True
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, deep nesting
        parsed, decoded = None, False
    vendor = parsed if isinstance(parsed, dict) else {}
    code, uq = _text(vendor.get("code")), _text(vendor.get("uq"))
    vendor_message = _text(vendor.get("message"))

    def error(cls: type[UpstreamError], fallback: str) -> UpstreamError:
        return cls(vendor_message or fallback, endpoint=endpoint, status=status, code=code, uq=uq)

    if status in (401, 403):
        raise error(UpstreamAuthError, f"HTTP {status}: credentials refused")
    if status == 429 or (status == 503 and retry_after is not None):
        raise UpstreamRateLimited(
            vendor_message or f"HTTP {status}: rate limited",
            retry_after=retry_after,
            endpoint=endpoint,
            status=status,
            code=code,
            uq=uq,
        )
    if status >= 500:
        raise error(UpstreamUnavailable, f"HTTP {status}")
    if not 200 <= status < 300:
        raise error(UpstreamApiError, f"HTTP {status}")
    if not decoded or not isinstance(parsed, dict | list):
        raise error(UpstreamUnavailable, f"HTTP {status} with a malformed (non-JSON-object) body")
    if isinstance(parsed, list):
        return Reply(body={}, data=parsed, enveloped=False, status=status)
    if "result" not in parsed:
        return Reply(body=parsed, data=parsed, enveloped=False, status=status)
    if parsed.get("result") is True and parsed.get("code") == SUCCESS_CODE:
        return Reply(body=parsed, data=parsed.get("data"), enveloped=True, status=status)
    raise error(UpstreamApiError, f"result={parsed.get('result')!r} code={code!r}")


def malformed(endpoint: str, what: str, reply: Reply) -> UpstreamUnavailable:
    """The error for a 2xx answer whose payload does not have the expected shape."""
    return UpstreamUnavailable(
        f"unexpected payload: {what}",
        endpoint=endpoint,
        status=reply.status,
        code=_text(reply.body.get("code")),
        uq=_text(reply.body.get("uq")),
    )
