"""De-duplication by ticket and event revisions (SPEC §3, §4). Pure: no I/O.

`decide` compares a new media fingerprint with what the store remembers of the
ticket. Only fields present in *both* fingerprints are compared: the poll list
carries every media field, a vendor push only some, and a field one source does
not carry is not a change. The remembered fingerprint is the old one merged with
every field the new source carried, so the next comparison sees the newest value.

The caller stores `Decision.ticket_state` in the same transaction as the
notification it builds (marking a ticket seen anywhere else voids at-least-once).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from bridge.store.base import SeenTicket

MEDIA_FIELDS: Final[tuple[str, ...]] = (
    "has_video",
    "uploading",
    "videos_count",
    "videos_total_count",
    "expired",
    "expires_at",
)
"""The fields that make a revision, in the order `changed` lists them."""

VIDEOS: Final = "videos"
"""The camera ids with a video file, sorted: carried only by a sighting whose video
links were fetched (`bridge.video_links`). It makes a revision (`media.videos`, listed
after the fields above) only when the *set* changes: the vendor re-signs URLs on every
call, so the URLs themselves are never compared. A first non-empty set is a change."""

VIDEOS_DUE: Final = "videos_due"
"""Bookkeeping, never a revision: true while a video-link fetch failed and is owed."""

_REMEMBERED: Final = (*MEDIA_FIELDS, VIDEOS, VIDEOS_DUE)


@dataclass(slots=True)
class Decision:
    """What to do with one sighting of a ticket (treated as immutable; not frozen for
    the ~0.4 µs a frozen `__init__` costs per sighting)."""

    kind: Literal["created", "updated", "duplicate"]
    revision: int
    changed: list[str]
    ticket_state: SeenTicket

    @property
    def notify(self) -> bool:
        """True when the sighting calls for a notification (created or updated)."""
        return self.kind != "duplicate"


def _media_only(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    return {k: fingerprint[k] for k in _REMEMBERED if k in fingerprint}


def _camera_set(value: Any) -> frozenset[Any]:
    return frozenset(value) if isinstance(value, list | tuple) else frozenset()


def _videos_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """A fetched camera set that differs from the one remembered (none = empty)."""
    return VIDEOS in new and _camera_set(new[VIDEOS]) != _camera_set(old.get(VIDEOS))


def decide(
    prev: SeenTicket | None, ticket: str, fingerprint: Mapping[str, Any], now: float
) -> Decision:
    """Created (first sighting), updated (a media field really changed) or duplicate.

    A duplicate that teaches nothing new returns `prev` itself as `ticket_state`,
    so callers can skip the write (`decision.ticket_state is prev`): polls re-scan
    their lookback window and would otherwise rewrite every ticket on every run.
    """
    new = _media_only(fingerprint)
    if prev is None:
        state = SeenTicket(
            ticket=ticket, revision=1, fingerprint=new, first_seen_at=now, updated_at=now
        )
        return Decision(kind="created", revision=1, changed=[], ticket_state=state)

    old = _media_only(prev.fingerprint)
    changed = [f"media.{k}" for k in MEDIA_FIELDS if k in old and k in new and old[k] != new[k]]
    if _videos_changed(old, new):
        changed.append(f"media.{VIDEOS}")
    merged = {k: new.get(k, old.get(k)) for k in _REMEMBERED if k in new or k in old}
    if not changed and merged == old and prev.fingerprint == old:
        return Decision(kind="duplicate", revision=prev.revision, changed=[], ticket_state=prev)
    revision = prev.revision + 1 if changed else prev.revision
    state = SeenTicket(
        ticket=ticket,
        revision=revision,
        fingerprint=merged,
        first_seen_at=prev.first_seen_at,
        updated_at=now,
    )
    kind: Literal["updated", "duplicate"] = "updated" if changed else "duplicate"
    return Decision(kind=kind, revision=revision, changed=changed, ticket_state=state)


def event_data_with_revision(
    data: Mapping[str, Any], revision: int, changed: Sequence[str]
) -> dict[str, Any]:
    """`data` of `event.*` with `revision` and `changed` placed after `linked_ticket`."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("revision", "changed"):
            continue
        out[key] = value
        if key == "linked_ticket":
            out["revision"] = revision
            out["changed"] = list(changed)
    if "revision" not in out:
        out["revision"] = revision
        out["changed"] = list(changed)
    return out
