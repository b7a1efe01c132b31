"""The `Target` protocol and the outcome of one send.

A target only knows how to put one notification on its wire and how to classify
the answer. Retries, backoff, rate limits, concurrency, pausing and metrics are
the dispatcher's job (bridge/dispatch.py), composed around every target alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from bridge.store.base import Delivery


@dataclass(frozen=True)
class SendResult:
    """How one attempt ended, as the target classifies it."""

    ok: bool
    status: int | None = None  # HTTP status (or protocol code) when there was an answer
    error: str | None = None  # short, secret-free description for logs and the API
    retryable: bool = True  # False: permanent failure, the delivery goes dead now
    retry_after: float | None = None  # seconds: hold the WHOLE target this long
    pause: bool = False  # the receiver is gone (webhook 410): pause the target

    @classmethod
    def success(cls, status: int | None = None) -> SendResult:
        # One per status, built once: a result is immutable, and this runs per send.
        result = _SUCCESSES.get(status)
        if result is None:
            result = _SUCCESSES[status] = cls(ok=True, status=status)
        return result


_SUCCESSES: dict[int | None, SendResult] = {}


class Target(Protocol):
    """One configured destination."""

    name: str

    async def start(self) -> None:
        """Open connections (called once before the first send)."""
        ...

    async def send(self, delivery: Delivery, envelope: Mapping[str, Any], body: str) -> SendResult:
        """Deliver one notification; never raises for delivery failures.

        `envelope` is the (possibly redacted) envelope and `body` its compact JSON.
        """
        ...

    async def close(self) -> None:
        """Release connections; called once at shutdown."""
        ...


class LazyEnvelope(Mapping[str, Any]):
    """The envelope, parsed from its stored JSON only if a target looks at it.

    The webhook target sends the stored body as is and never needs the parsed
    form; parsing 50,000 bodies it would throw away is measurable.
    """

    __slots__ = ("_body", "_parsed")

    def __init__(self, body: str) -> None:
        self._body = body
        self._parsed: dict[str, Any] | None = None

    def _data(self) -> dict[str, Any]:
        if self._parsed is None:
            self._parsed = json.loads(self._body)
        return self._parsed

    def __getitem__(self, key: str) -> Any:
        return self._data()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data())

    def __len__(self) -> int:
        return len(self._data())
