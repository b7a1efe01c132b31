"""Row builders shared by the SQLite and PostgreSQL stores (no driver imports here)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from bridge.clock import parse_rfc3339
from bridge.notifications import Notification, dumps
from bridge.store.base import Delivery, DeliveryRecord, DeliveryState, Outcome, SeenTicket


def ticket_row(t: SeenTicket) -> tuple[Any, ...]:
    """(ticket, revision, fingerprint JSON, first_seen_at, updated_at)."""
    return (t.ticket, t.revision, dumps(t.fingerprint), t.first_seen_at, t.updated_at)


def tickets_by_name(rows: Iterable[Sequence[Any]]) -> dict[str, SeenTicket]:
    """Stored ticket rows (ticket, revision, fingerprint JSON, first seen, updated) by ticket."""
    return {
        row[0]: SeenTicket(
            ticket=row[0],
            revision=row[1],
            fingerprint=orjson.loads(row[2]),
            first_seen_at=row[3],
            updated_at=row[4],
        )
        for row in rows
    }


def notification_row(n: Notification) -> tuple[Any, ...]:
    """(id, type, created_at, event_at, body): each fact stored once (the body has the rest)."""
    # Events carry their time as a number already: no RFC 3339 text parsed back per row.
    at = n.event_at if n.event_at is not None else event_at(n)
    return (n.id, n.type, n.created_at, at, n.body)


def event_at(n: Notification) -> float | None:
    """When the source item happened (`data.occurred_at`), for event-to-delivery latency."""
    occurred = n.data.get("occurred_at")
    if not isinstance(occurred, str):
        return None
    try:
        return parse_rfc3339(occurred).timestamp()
    except ValueError:
        return None


def delivery_from_row(row: Sequence[Any], claim: str, claim_until: float) -> Delivery:
    """A claimed delivery from (id, notification_id, type, target, body, attempts,
    created_at, event_at)."""
    return Delivery(
        id=row[0],
        notification_id=row[1],
        type=row[2],
        target=row[3],
        body=row[4],
        attempts=row[5],
        created_at=row[6],
        event_at=row[7],
        claim=claim,
        claim_until=claim_until,
    )


def record_from_row(row: Sequence[Any]) -> DeliveryRecord:
    """A listed delivery from the list query's columns."""
    return DeliveryRecord(
        id=row[0],
        notification_id=row[1],
        type=row[2],
        target=row[3],
        state=DeliveryState(row[4]),
        attempts=row[5],
        last_status=row[6],
        last_error=row[7],
        next_attempt_at=row[8],
        created_at=row[9],
    )


OUTCOME_STATES = (DeliveryState.DELIVERED, DeliveryState.DEAD, DeliveryState.PENDING)
ERROR_MAX_CHARS = 500  # last_error is for people reading the API, not a log archive


def outcome_values(outcome: Outcome, now: float) -> tuple[str, float | None, str | None]:
    """(state, next_attempt_at, trimmed error) to store for an outcome; ValueError for
    a state an attempt cannot end in."""
    state = DeliveryState(outcome.state)
    if state not in OUTCOME_STATES:
        raise ValueError(f"an outcome cannot be {state.value!r}")
    next_attempt_at = None
    if state is DeliveryState.PENDING:
        next_attempt_at = now if outcome.next_attempt_at is None else outcome.next_attempt_at
    error = outcome.error
    if error is not None and len(error) > ERROR_MAX_CHARS:
        error = error[: ERROR_MAX_CHARS - 1] + "…"
    return state.value, next_attempt_at, error


def columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows → one list per column (the arrays PostgreSQL's `unnest` takes)."""
    if not rows:
        return [[] for _ in range(width)]
    out = [list(column) for column in zip(*rows, strict=True)]
    if len(out) != width:
        raise ValueError(f"rows of {len(out)} values, expected {width}")
    return out


def json_object(raw: str) -> dict[str, Any]:
    """A stored JSON object (keyed state, fingerprints)."""
    value: dict[str, Any] = json.loads(raw)
    return value


def zero_counts() -> dict[str, int]:
    return {"pending": 0, "in_flight": 0, "dead": 0}
