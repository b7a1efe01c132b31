"""Video links of events (SPEC §5.1): `POST /V2/event/GetVideoDetail` into `media.videos`.

When an event that occurred within `poll.events.video_links_max_age_s` has
`has_video` true at its first sighting, or it turns true, or its `videos_count` moves
while it is true (the only signs that the camera set may have changed), the ingest
path fetches the event's video files once and puts them into `media.videos` of that
`event.created` / `event.updated`, so a Slack thread reply can link each camera.

The camera set goes into the ticket's fingerprint (`bridge.dedup.VIDEOS`): a
revision (`media.videos`) only when the *set* changes, never for re-signed URLs. A
failed fetch never holds the alert back: it goes out with `media.videos: null`, and
the fingerprint remembers the fetch is owed (`VIDEOS_DUE`), so the next sighting in
the re-scan window tries again; success then makes an `event.updated` with
`changed: ["media.videos"]`. A ticket whose links are known is not fetched again
until one of those signs: one fetch per ticket and camera-set change, not per poll.
Other updates (upload finished, expiry) carry `media.videos: null`: not asked.

`wants_videos` and `with_videos` are pure; `fetch_videos` is the I/O, bounded by the
caller (`bridge.enrich`: at most 4 fetches at once, a deadline, outcomes counted) and
paced by the upstream client's rate limit like every other vendor request.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final

from bridge.dedup import VIDEOS, VIDEOS_DUE, decide
from bridge.normalize import NormalizedEvent, event_videos
from bridge.store.base import SeenTicket
from bridge.upstream.client import UpstreamClient

_MAY_CHANGE_CAMERAS: Final = frozenset({"media.has_video", "media.videos_count"})


def wants_videos(
    ev: NormalizedEvent, prev: SeenTicket | None, now: float, max_age_s: float
) -> bool:
    """True when this sighting of a ticket should fetch its video links."""
    media = ev.data.get("media")
    if not isinstance(media, dict) or media.get("has_video") is not True:
        return False
    if now - ev.occurred_at > max_age_s:
        return False  # a catch-up spends no vendor budget on links
    if prev is None:
        return True
    if VIDEOS not in prev.fingerprint or prev.fingerprint.get(VIDEOS_DUE):
        return True  # never fetched (has_video came with a push) or a fetch is owed
    # Known links are fetched again only when the camera set may have changed: the
    # video came back or the uploaded count moved. Re-scans of an unchanged ticket,
    # and changes that bring no file (uploading, expiry), cost nothing.
    changed = decide(prev, ev.ticket, ev.fingerprint, now).changed
    return any(path in _MAY_CHANGE_CAMERAS for path in changed)


def camera_set(videos: list[dict[str, Any]]) -> list[str]:
    """The sorted camera ids of `media.videos` (what the fingerprint remembers)."""
    return sorted({str(v.get("cam_id") or "") for v in videos})


def with_videos(ev: NormalizedEvent, videos: list[dict[str, Any]] | None) -> NormalizedEvent:
    """`ev` carrying a fetch's outcome: the files and camera set, or None (owed)."""
    data = {**ev.data, "media": {**ev.data["media"], "videos": videos}}
    fingerprint = dict(ev.fingerprint)
    if videos is None:
        fingerprint[VIDEOS_DUE] = True
    else:
        fingerprint[VIDEOS] = camera_set(videos)
        fingerprint[VIDEOS_DUE] = False
    return dataclasses.replace(ev, data=data, fingerprint=fingerprint)


async def fetch_videos(client: UpstreamClient, ticket: str) -> list[dict[str, Any]]:
    """The ticket's `media.videos` from GetVideoDetail (raises `UpstreamError`).

    One attempt: a failure is retried on the ticket's next re-scan, not in the call,
    so in-call backoff never holds the alert back.
    """
    detail = await client.video_detail(ticket, retry=False)
    return event_videos(detail.get("videos"))
