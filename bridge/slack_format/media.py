"""An event's media in words, and video links, for Slack messages. Pure.

Shared by the event messages (media state, what an update changed, the cameras'
links) and the clip and upload messages (their videos).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import tzinfo
from typing import Any

from bridge.display import as_int, as_list, camera_name, dig, local_time, plural
from bridge.markup import escape_mrkdwn
from bridge.slack_format.blocks import LIST_BLOCKS_MAX, context, link, list_sections, m


def _clips(count: int | None, total: int | None) -> str | None:
    if count is not None and total is not None:
        return f"{count:,} of {plural(total, 'clip')}"
    if count is not None:
        return plural(count, "clip")
    if total is not None:
        return f"{plural(total, 'clip')} expected"
    return None


def media_state(media: Any, tz: tzinfo) -> str:
    """The media of an event in words: video available / uploading / none, with counts."""
    has_video, uploading = dig(media, "has_video"), dig(media, "uploading")
    expired = dig(media, "expired")
    clips = _clips(as_int(dig(media, "videos_count")), as_int(dig(media, "videos_total_count")))
    if expired is True:
        state = "⌛ Video expired"
    elif has_video is True and uploading is True:
        state = "🎥 Video available, more uploading"
    elif has_video is True:
        state = "🎥 Video available"
    elif uploading is True:
        state = "⏫ Uploading"
    elif has_video is False:
        state = "No video"
    else:
        state = "Unknown"
    text = f"{state} ({clips})" if clips else state
    expires = local_time(dig(media, "expires_at"), tz)
    if expires and expired is not True and has_video is True:
        text += f"\nexpires {expires}"
    return text


def _flag(value: Any, yes: str, no: str, unknown: str) -> str:
    return yes if value is True else no if value is False else unknown


def _change(path: str, media: Any, tz: tzinfo) -> str:
    value = dig(media, path.removeprefix("media.")) if path.startswith("media.") else None
    count, total = as_int(dig(media, "videos_count")), as_int(dig(media, "videos_total_count"))
    match path:
        case "media.has_video":
            return _flag(value, "video now available", "video no longer available", "video unknown")
        case "media.uploading":
            return _flag(value, "upload started", "upload finished", "upload state unknown")
        case "media.videos_count" | "media.videos_total_count":
            return f"clips: {_clips(count, total) or 'unknown'}"
        case "media.expired":
            return _flag(value, "video expired", "video no longer expired", "expiry unknown")
        case "media.expires_at":
            when = local_time(value, tz)
            return f"video expires {when}" if when else "expiry cleared"
        case "media.videos":
            names = camera_names(value)
            return f"video links: {names}" if names else "video links changed"
    return m(path, 64) or "media"


def camera_names(videos: Any) -> str | None:
    """ "Front, In-cabin" for the cameras of `media.videos` (escaped); None if none."""
    names: list[str] = []
    for video in as_list(videos)[:100]:  # a hostile list is not walked to its end
        name = escape_mrkdwn(camera_name(dig(video, "cam_id")))
        if name not in names:
            names.append(name)
    if not names:
        return None
    more = len(names) - LIST_BLOCKS_MAX
    return ", ".join(names[:LIST_BLOCKS_MAX]) + (f" and {more:,} more" if more > 0 else "")


def what_changed(data: Mapping[str, Any], tz: tzinfo) -> str:
    """The `changed` paths of an event.updated in words (deduplicated, in order)."""
    media = data.get("media")
    phrases: list[str] = []
    for path in as_list(data.get("changed"))[:20]:
        if isinstance(path, str):
            phrase = _change(path, media, tz)
            if phrase not in phrases:
                phrases.append(phrase)
    return "; ".join(phrases) or "media state changed"


def duration(value: Any) -> str | None:
    """Whole seconds as `12 s`; None if not an integer."""
    seconds = as_int(value)
    return f"{seconds:,} s" if seconds is not None else None


def _videos(videos: Any, tz: tzinfo) -> tuple[list[str], int]:
    """Lines with one video link per camera, and how many videos had no usable link."""
    lines, unusable = [], 0
    for video in as_list(videos):
        url_link = link(dig(video, "url"), camera_name(dig(video, "cam_id")))
        if url_link is None:
            unusable += 1
            continue
        notes = [
            duration(dig(video, "duration_s")),
            f"expires {when}" if (when := local_time(dig(video, "expires_at"), tz)) else None,
        ]
        shown = ", ".join(n for n in notes if n)
        lines.append(f"• {url_link}" + (f" ({shown})" if shown else ""))
    return lines, unusable


def video_blocks(videos: Any, tz: tzinfo) -> tuple[list[dict[str, Any]], int]:
    """A "Videos" list of links and a note on unusable ones; how many links."""
    lines, unusable = _videos(videos, tz)
    blocks = list_sections("Videos", lines) if lines else []
    if unusable:
        blocks.append(context([f"{plural(unusable, 'video')} without a usable link"]))
    return blocks, len(lines)
