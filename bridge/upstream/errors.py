"""Errors raised by the upstream (VisionMax) client.

The tree, so callers can catch exactly what they can handle::

    UpstreamError                  anything that went wrong talking to the vendor
    ├── UpstreamUnavailable        transient: connection error, timeout, 5xx,
    │   │                          malformed body; GETs are retried on these
    │   └── UpstreamRateLimited    429 (or 503) with an optional Retry-After
    ├── UpstreamAuthError          401/403, or a token rejected after re-login
    └── UpstreamApiError           the vendor answered but said no: a non-2xx
                                   4xx, or `result: false` / `code != S00000`

Every error carries the endpoint, the HTTP status (when there was a response)
and the vendor's `code`, `message` and `uq` (the request id vendor support asks
for) when the body had them.
"""

from __future__ import annotations


class UpstreamError(Exception):
    """Base of every upstream failure."""

    def __init__(
        self,
        message: str,
        *,
        endpoint: str = "",
        status: int | None = None,
        code: str | None = None,
        uq: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.endpoint = endpoint
        self.status = status
        self.code = code
        self.uq = uq

    def log_fields(self) -> dict[str, object]:
        """Fields worth a log line (never secrets: the vendor never echoes them)."""
        return {
            "error": type(self).__name__,
            "endpoint": self.endpoint,
            "status": self.status,
            "code": self.code,
            "vendor_message": self.message,
            "uq": self.uq,
        }


class UpstreamUnavailable(UpstreamError):
    """A transient failure: worth retrying later."""


class UpstreamRateLimited(UpstreamUnavailable):
    """The vendor asked us to slow down (429, or 503 with Retry-After)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class UpstreamAuthError(UpstreamError):
    """The API key or token was refused."""


class UpstreamApiError(UpstreamError):
    """The vendor understood the request and refused it."""
