"""The `Store` protocol: the spine of the pipeline (a transactional outbox).

Ingest writes a notification, one delivery row per routed target, the ticket's
new revision fingerprint and the moved cursor in ONE transaction (`Store.ingest`);
each target's dispatcher then claims its own due deliveries and records outcomes.
Implementations: `sqlite.SqliteStore` (embedded default, one process) and
`postgres.PostgresStore` (any number of replicas on one database, SPEC §9).

Delivery states::

    pending ──claim──▶ in_flight ──▶ delivered
       ▲                  │
       └──── retry ◀──────┤
                          └──▶ dead ──(API retry / replay)──▶ pending

Storm control (SPEC §6.5) parks a claimed row as `grouped`, `suppressed` or
`held` instead (`Store.storm`); parked rows that an `event.group` carried keep
that notification's id, and a suppressed row can be re-queued like a dead one.

Each claim carries the claimer's token and an expiry. A crash leaves rows
`in_flight`; whoever sees the claim expired takes the row again (at-least-once),
and an outcome written later under the expired (or a foreign) claim is ignored.

Several writers (replicas, the poll and push paths) are made safe by the store,
not by callers being alone: tickets are inserted only if absent and updated only
if their revision is still the one the decision was based on (`TicketConflict`
makes `ingest` re-run its callback); target state (pause, hold, rate budget,
the in-flight cap) lives in the store; cursor writes are fenced by the poll lease.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from bridge.notifications import Notification

T = TypeVar("T")


class DeliveryState(StrEnum):
    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    DELIVERED = "delivered"
    DEAD = "dead"
    # Storm control (SPEC §6.5): parked instead of sent.
    GROUPED = "grouped"  # waits for (or was carried by) an `event.group`
    SUPPRESSED = "suppressed"  # inhibited by a more severe notification; replayable
    HELD = "held"  # muted; goes out in an `event.group` when the quiet hours end


class StoreUnavailable(Exception):
    """The store cannot be reached or answered with an I/O error."""


class TicketConflict(Exception):
    """Another writer changed a ticket since it was read: the ingest is re-run."""


class FencedOut(Exception):
    """A cursor write by a replica that no longer holds the poll lease (rejected)."""


@dataclass(frozen=True)
class Lease:
    """The poll lease (SPEC §9): who holds it, its fencing epoch, when it expires."""

    holder: str | None  # None once released
    epoch: int
    expires_at: float  # Unix seconds, by the store's clock


class StoreRejected(StoreUnavailable):
    """The store cannot hold this data (it cannot be encoded, or a value is out of range).

    Retrying the same data fails the same way, so callers that write many items
    (ingest) retry them one by one and skip the ones rejected; everyone else may
    treat it as any other store error.
    """


def is_outage(err: BaseException) -> bool:
    """The store is down (retry the whole batch later), not refusing this data."""
    return isinstance(err, StoreUnavailable) and not isinstance(err, StoreRejected)


@dataclass(frozen=True)
class SeenTicket:
    """What de-dup remembers of a ticket: its last revision and media fingerprint."""

    ticket: str
    revision: int
    fingerprint: dict[str, Any]
    first_seen_at: float
    updated_at: float


@dataclass(slots=True)  # read-only by convention: see Delivery
class NewNotification:
    """A notification to store together with the targets it is routed to."""

    notification: Notification
    targets: Sequence[str]


@dataclass(frozen=True)
class HandOff:
    """New delivery rows of one target to insert already claimed (`IngestTx.add_notifications`).

    The first `limit` new rows of the target go in `in_flight` under `token`, with the
    store's claim lease, for the local dispatcher that reserved room for them; they
    are the durable record exactly as claimed rows are (outcomes carry the token, an
    expired lease makes them claimable again, SQLite's `recover` releases them).
    """

    token: str
    limit: int


# Delivery and Outcome are made once or more per notification on the hot path: plain
# slotted dataclasses build in ~0.3 µs where frozen ones take ~1.1 µs (a frozen
# dataclass sets each field through object.__setattr__). Treat them as read-only.


@dataclass(slots=True)
class Delivery:
    """A delivery row as a dispatcher sees it after claiming it (read-only by convention)."""

    id: int
    notification_id: str
    type: str
    target: str
    body: str  # the envelope JSON as stored
    attempts: int  # attempts made before this one
    created_at: float  # when this delivery was queued (max_age_s counts from here)
    event_at: float | None = None  # occurred_at of the source item, for latency metrics
    claim: str = ""  # the claim's token: outcomes must carry it
    claim_until: float = float("inf")  # the claim expires then; others may take the row


@dataclass(frozen=True)
class ShareClaim:
    """What `Store.claim_share` gives a dispatcher: rows, and how many sends it may run."""

    deliveries: list[Delivery]
    share: int  # sends this claimer may have under way (all claimers' never exceed the cap)
    until: float  # the share lapses then unless a later claim renews it
    # The fair share among the claimers holding work: above `share` while others still
    # hold more than theirs (they give it back as their sends end).
    fair: int


@dataclass(frozen=True)
class DeliveryRecord:
    """A delivery row as the admin API lists it."""

    id: int
    notification_id: str
    type: str
    target: str
    state: DeliveryState
    attempts: int
    last_status: int | None
    last_error: str | None
    next_attempt_at: float | None
    created_at: float


@dataclass(slots=True)
class Outcome:
    """The result of one attempt, recorded by `Store.record_outcomes` (read-only by convention)."""

    delivery_id: int
    state: DeliveryState  # DELIVERED, PENDING (retry later) or DEAD
    attempts: int  # attempts made including this one
    status: int | None = None
    error: str | None = None
    next_attempt_at: float | None = None  # for PENDING
    # The token of the claim the attempt was made under. An outcome whose claim has
    # expired or was taken over is ignored. None (operator paths, tests) matches any
    # live row in flight.
    claim: str | None = None


@dataclass(frozen=True)
class TargetState:
    """Persisted per-target control state."""

    paused: bool = False
    paused_reason: str | None = None
    hold_until: float | None = None  # Retry-After: no sends before this time
    failures: int = 0  # consecutive transient failures (as of the last save)
    probe_at: float | None = None  # set while failing (SPEC §4): when the next probe may go

    @property
    def failing(self) -> bool:
        """Whether only a probe delivery may go out."""
        return self.probe_at is not None


def after_failure(
    state: TargetState,
    now: float,
    *,
    probe: bool,
    failing_after: int,
    probe_delay: Callable[[int], float],
) -> tuple[TargetState, bool] | None:
    """The target state after one transient failure (see `Store.target_failed`),
    and whether it made the target failing; None when the failure does not count."""
    if state.failing != probe:
        # A probe outcome after the target recovered, or a send that was already
        # under way when the target began failing: neither moves the cadence.
        return None
    failures = state.failures + 1
    if not probe and failures < failing_after:
        return replace(state, failures=failures), False
    return replace(state, failures=failures, probe_at=now + probe_delay(failures)), not probe


@dataclass(slots=True)  # read-only by convention: see Delivery
class TicketWrite:
    """A ticket's new state and the state the decision was based on (None: unseen).

    The store writes it only if the stored ticket is still `prev` (absent, or at
    `prev.revision`); otherwise the ingest raises `TicketConflict` and is re-run.
    """

    new: SeenTicket
    prev: SeenTicket | None


@dataclass
class IngestResult:
    """What one ingest transaction did (for the poll run's canonical log line)."""

    created: int = 0
    updated: int = 0
    duplicates: int = 0
    notifications: list[Notification] = field(default_factory=list)


class IngestTx(Protocol):
    """Operations available inside one ingest transaction."""

    async def seen_tickets(self, tickets: Sequence[str]) -> dict[str, SeenTicket]:
        """The stored state of these tickets (missing ones are absent)."""
        ...

    async def put_tickets(self, rows: Sequence[SeenTicket | TicketWrite]) -> None:
        """Write ticket states: insert-if-absent / revision compare-and-set.

        A bare `SeenTicket` is an unconditional upsert (tests, migrations of state).
        A `TicketWrite` whose `prev` no longer matches raises `TicketConflict`.
        """
        ...

    async def add_notifications(
        self, items: Sequence[NewNotification], claims: Mapping[str, HandOff] | None = None
    ) -> list[Delivery]:
        """Store notifications and one pending delivery per routed target.

        With `claims` a store run by one process (not `shared`) inserts the first
        `limit` new rows of each listed target `in_flight` under the `HandOff`'s token
        and returns them, claimed, in creation order, for the caller to hand to that
        target's dispatcher after commit. A shared store may ignore `claims` (fresh
        rows stay claimable by every replica) and returns none.
        """
        ...

    async def set_cursor(self, job: str, value: float) -> None:
        """Move a poller's cursor (committed with everything else).

        Raises `FencedOut` when the store is fenced (`set_fence`) and that lease is
        no longer live: a stale leader's whole transaction rolls back.
        """
        ...

    async def delete_json(self, kind: str, key: str) -> None:
        """Forget keyed state in the same transaction (e.g. an ingested push)."""
        ...

    async def put_json(self, kind: str, key: str, value: dict[str, Any]) -> None:
        """Keep small keyed state (clip tasks, uploads) in the same transaction."""
        ...

    async def get_json(self, kind: str, key: str) -> dict[str, Any] | None:
        """Read keyed state inside the transaction."""
        ...


IngestFn = Callable[[IngestTx], Awaitable[Any]]


class Store(Protocol):
    """Durable state of the bridge. Every method is safe to call concurrently."""

    # True when several processes share the store (PostgreSQL): dispatchers then
    # keep the rate budget and in-flight cap in the store, not in memory.
    shared: bool

    async def open(self) -> None:
        """Connect and apply pending migrations."""
        ...

    async def close(self) -> None:
        """Flush and close."""
        ...

    async def ping(self) -> None:
        """Raise `StoreUnavailable` unless the store answers (readiness)."""
        ...

    # -- ingest ------------------------------------------------------------------

    async def ingest(self, fn: IngestFn) -> Any:
        """Run `fn(tx)` in one transaction; commit if it returns, roll back if it raises.

        On `TicketConflict` the transaction is rolled back and `fn` runs again (it
        must be re-runnable). After commit, dispatchers of the targets that got new
        deliveries are woken (see `subscribe`), on every replica.
        """
        ...

    def set_fence(self, holder: str, epoch: int) -> None:
        """Fence cursor writes from now on by this lease (see `IngestTx.set_cursor`)."""
        ...

    async def get_cursor(self, job: str) -> float | None:
        """A poller's cursor, or None before its first run."""
        ...

    async def get_json(self, kind: str, key: str) -> dict[str, Any] | None:
        """Keyed state outside a transaction."""
        ...

    async def list_json(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        """All keyed state of one kind (e.g. open clip tasks)."""
        ...

    # -- dispatch ----------------------------------------------------------------

    def subscribe(self, target: str, wake: Callable[[], None]) -> None:
        """Call `wake()` after every commit that adds deliveries for `target`."""
        ...

    async def recover(self) -> int:
        """Release claims nobody alive holds back to pending; returns how many.

        SQLite (one process) releases every claim at start-up; a shared store only
        expired ones, since other replicas' claims are live.
        """
        ...

    async def claim(
        self,
        target: str,
        now: float,
        limit: int,
        *,
        fifo: bool,
        max_in_flight: int | None = None,
    ) -> list[Delivery]:
        """Claim up to `limit` due deliveries of `target`, oldest first, under one token.

        Nothing while the target is paused or held. Expired claims are due. With
        `fifo`, only the oldest unfinished delivery is eligible, and only when it is
        due: a failing head blocks the rest (strict FIFO). With `max_in_flight`, the
        claim never makes the target's live claims (all claimers) exceed it.
        """
        ...

    async def claim_share(
        self,
        target: str,
        now: float,
        limit: int,
        *,
        max_in_flight: int,
        replica: str,
        sending: int,
        queued: int,
        outcomes: Sequence[Outcome] = (),
    ) -> ShareClaim:
        """Settle, claim and take in-flight slots, in one transaction (one round trip).

        `outcomes` are recorded first by the rules of `record_outcomes`. Then up to
        `limit` due rows are claimed as `claim` does without `fifo`, uncapped: the cap
        is on sends. `max_in_flight` counts the sends under way of all claimers: each
        (`replica`) says how many it has or may start before this answer (`sending`:
        at least its current share) and how much work it holds (`queued`, before this
        claim) and is given a `share`, the sends it may have under way
        until `until` — fair among the claimers holding work, and never more than what
        the others' sends and shares leave free. A claimer over its share starts no
        send until it is under it. With one writer process (SQLite) the share is the
        whole cap.
        """
        ...

    async def next_due_at(self, target: str, *, fifo: bool) -> float | None:
        """When the next pending delivery of `target` becomes due (None if none)."""
        ...

    async def record_outcomes(self, outcomes: Sequence[Outcome], now: float) -> None:
        """Record the result of attempts (batched: one transaction)."""
        ...

    async def get_target_state(self, target: str) -> TargetState:
        """Pause / hold state of a target."""
        ...

    async def set_target_state(self, target: str, state: TargetState) -> None:
        """Persist pause / hold state of a target."""
        ...

    async def pause_target(self, target: str, reason: str) -> bool:
        """Pause a target (all replicas); False if it was paused already."""
        ...

    async def resume_target(self, target: str) -> bool:
        """Un-pause a target and wake its dispatchers everywhere; False if not paused."""
        ...

    async def hold_target(self, target: str, until: float) -> None:
        """No sends to `target` before `until` (Retry-After); never shortens a hold."""
        ...

    async def reserve_send_slot(self, target: str, now: float, interval_s: float) -> float:
        """The start time of this caller's send slot; slots are `interval_s` apart
        for the target as a whole (the shared `rate_limit_per_s` budget)."""
        ...

    async def storm(self, target: str, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run `fn(tx)` (a `storm_tx.StormTx`) in one transaction for `target`.

        Storm transactions of one target never run at the same time, on any replica,
        so a group is decided and flushed once. Wakes the target after commit when a
        delivery became pending.
        """
        ...

    # -- the poll lease (SPEC §9) ---------------------------------------------------

    async def acquire_lease(self, holder: str, ttl_s: float) -> Lease | None:
        """Take the lease if it is free, expired or already ours (always a new epoch: a
        holder that lost it locally fences its own older work); None if another holds it."""
        ...

    async def renew_lease(self, holder: str, epoch: int, ttl_s: float) -> Lease | None:
        """Extend our live lease by `ttl_s` from the store's now; None if it is not ours."""
        ...

    async def release_lease(self, holder: str, epoch: int) -> None:
        """Give the lease up at once (clean stop)."""
        ...

    async def get_lease(self) -> Lease | None:
        """The lease as stored (None before anyone took it)."""
        ...

    async def target_failed(
        self,
        target: str,
        now: float,
        *,
        probe: bool,
        failing_after: int,
        probe_delay: Callable[[int], float],
    ) -> tuple[TargetState, bool]:
        """Count one transient failure of `target` for the target as a whole (SPEC §4).

        Atomic across writers. Not failing: the count goes up, and at `failing_after`
        the target becomes failing with its first probe at `now + probe_delay(count)`.
        A failed probe (`probe`) counts and sets the next probe time the same way; any
        other failure of a failing target (a send already under way) is not counted.
        Returns the state after, and whether this call made the target failing."""
        ...

    async def claim_probe(self, target: str, now: float) -> Delivery | None:
        """Claim the probe of a failing target: the oldest pending delivery whatever its
        next attempt time, only when the probe is due (`probe_at <= now`). A
        compare-and-set on `probe_at` (moved to the claim's expiry) makes one caller of
        all replicas win; None if not failing, not due, taken, or nothing is pending."""
        ...

    async def target_recovered(self, target: str, now: float) -> int | None:
        """The receiver answered: reset the failure count and, if the target was failing,
        end it and make every pending delivery due now, waking every replica. The count
        released, or None if the target was not failing (nothing to log)."""
        ...

    async def expire_pending(self, target: str, created_before: float, now: float) -> int:
        """Dead-letter pending deliveries of `target` queued before `created_before`
        (`max_age_s` for a target that is paused or failing, whose deliveries are not
        attempted and so never reach the age check of a failed attempt)."""
        ...

    # -- operations --------------------------------------------------------------

    async def list_deliveries(
        self,
        *,
        state: DeliveryState | None = None,
        target: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[DeliveryRecord], str | None]:
        """Deliveries newest first, with an opaque cursor for the next page."""
        ...

    async def retry_delivery(self, delivery_id: int, now: float) -> bool:
        """Re-queue one dead or suppressed delivery now (storm control lets it through);
        False if it is neither or unknown."""
        ...

    async def replay(self, target: str, since: float, until: float, now: float) -> int:
        """New pending deliveries to `target` for notifications created in [since, until]
        that were routed to it (its filter applied), with their original ids."""
        ...

    async def queue_counts(self) -> dict[str, dict[str, int]]:
        """{target: {state: count}} for pending, in_flight and dead."""
        ...

    async def count_notifications(self, type_: str | None = None) -> int:
        """How many notifications are stored (optionally of one type)."""
        ...

    async def prune(self, older_than: float) -> int:
        """Delete notifications (and their deliveries) and tickets older than this."""
        ...


# -- API cursors ------------------------------------------------------------------------
# Opaque to callers: a versioned, URL-safe token, so the key behind it can change
# (another store, another ordering) without breaking clients' stored cursors.

_CURSOR_PREFIX = "d1."


def encode_cursor(delivery_id: int) -> str:
    """The cursor that lists deliveries older than `delivery_id`."""
    raw = str(delivery_id).encode()
    return _CURSOR_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The delivery id behind a cursor; ValueError for anything we did not hand out."""
    if not cursor.startswith(_CURSOR_PREFIX) or len(cursor) > 40:
        raise ValueError(f"invalid cursor {cursor[:40]!r}")
    body = cursor[len(_CURSOR_PREFIX) :]
    try:
        text = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"invalid cursor {cursor!r}") from None
    if not text.isdecimal() or not 1 <= int(text) <= 2**63 - 1:
        raise ValueError(f"invalid cursor {cursor!r}")
    return int(text)
