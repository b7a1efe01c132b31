"""The VisionMax upstream: its client, pages and error tree."""

from bridge.upstream.client import Page, UpstreamClient
from bridge.upstream.errors import (
    UpstreamApiError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamUnavailable,
)

__all__ = [
    "Page",
    "UpstreamApiError",
    "UpstreamAuthError",
    "UpstreamClient",
    "UpstreamError",
    "UpstreamRateLimited",
    "UpstreamUnavailable",
]
