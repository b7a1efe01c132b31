"""`clip.*` and `upload.updated` as Slack messages: a task's state, cameras, error and
videos. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import tzinfo
from typing import Any, Final

from bridge.display import as_int, as_list, clean, dig, plural
from bridge.markup import escape_mrkdwn
from bridge.slack_format.blocks import (
    SlackMessage,
    context,
    context_parts,
    field,
    finish,
    header,
    list_sections,
    m,
    map_link,
    section,
    time_m,
)
from bridge.slack_format.media import duration, video_blocks

_CLIP_TITLES: Final = {
    "clip.requested": ("🎬", "Clip requested"),
    "clip.updated": ("🔄", "Clip update"),
    "clip.completed": ("✅", "Clip ready"),
    "clip.failed": ("❌", "Clip failed"),
}


def _state(data: Mapping[str, Any]) -> str | None:
    state = clean(data.get("state"), 40)
    code = as_int(data.get("state_code"))
    if state is not None:
        state = state.replace("_", " ")
    if state and code is not None:
        return escape_mrkdwn(f"{state} ({code})")
    return escape_mrkdwn(state) if state else (f"state {code}" if code is not None else None)


def _cameras(data: Mapping[str, Any]) -> list[str]:
    lines = []
    for cam in as_list(data.get("cameras")):
        cam_id = m(dig(cam, "cam_id"), 40) or "camera"
        state = m(dig(cam, "state"), 60)
        number = as_int(dig(cam, "state_number"))
        detail = " ".join(
            p for p in (state, f"(state {number})" if number is not None else None) if p
        )
        lines.append(f"• {cam_id}: {detail or 'unknown'}")
    return lines


def _error(data: Mapping[str, Any]) -> str | None:
    code = m(dig(data, "error", "code"), 40)
    description = m(dig(data, "error", "description"), 300)
    if code and description:
        return f"{code} — {description}"
    return code or description


def _task_details(
    data: Mapping[str, Any], tz: tzinfo
) -> tuple[list[dict[str, Any]], str | None, int]:
    """Blocks for error, cameras and videos; the error text; how many video links."""
    blocks = []
    error = _error(data)
    if error:
        blocks.append(section(f"*Error:* {error}"))
    cameras = _cameras(data)
    if cameras:
        blocks.extend(list_sections("Cameras", cameras, max_blocks=3))
    videos, links = video_blocks(data.get("videos"), tz)
    blocks.extend(videos)
    return blocks, error, links


def _facts(
    task: str | None, device: str | None, state: str | None, error: str | None, videos: int
) -> str:
    """The fallback text's facts about a task (mrkdwn)."""
    facts = [
        f"task {task or 'unknown'}",
        f"device {device or 'unknown'}",
        f"state {state or 'unknown'}",
    ]
    if error:
        facts.append(f"error {error}")
    if videos:
        facts.append(plural(videos, "video"))
    return ", ".join(facts)


def clip_message(
    envelope: Mapping[str, Any], type_: str, data: Mapping[str, Any], tz: tzinfo
) -> SlackMessage:
    """A clip task's request, progress, or result with its videos."""
    icon, title = _CLIP_TITLES.get(type_, ("🎬", "Clip"))
    if type_ == "clip.completed" and data.get("state") == "partial_success":
        icon, title = "⚠️", "Clip partly ready"
    serial = clean(data.get("serial_number"), 60)
    task = m(data.get("task_id"), 100)
    state = _state(data)
    ticket = m(data.get("ticket"), 100)
    blocks = [header(icon, title, f" · {serial}" if serial else "")]
    fields = [
        field("Task", task),
        field("State", state),
        field("Device", escape_mrkdwn(serial) if serial else None),
        field("Camera", m(data.get("cam_id"), 40)),
        field("Target time", time_m(data.get("target_timestamp"), tz)),
        field("Duration", duration(data.get("duration_s"))),
        field("File", m(data.get("file_name"))),
    ]
    if ticket:
        fields.append(field("Ticket", ticket))
    blocks.append(section(fields=fields))
    details, error, videos = _task_details(data, tz)
    blocks.extend(details)
    blocks.append(context(context_parts(envelope, type_, f"Task {task}" if task else None)))

    device = escape_mrkdwn(serial) if serial else None
    return finish(blocks, f"{icon} {title}: " + _facts(task, device, state, error, videos))


def upload_message(
    envelope: Mapping[str, Any], type_: str, data: Mapping[str, Any], tz: tzinfo
) -> SlackMessage:
    """A manual upload's state change, with its videos once there."""
    event_name = clean(data.get("event_name"))
    device = m(data.get("serial_number")) or m(data.get("device_cid"))
    task = m(data.get("task_id"), 100)
    state = _state(data)
    expired = data.get("expired")
    left_days = as_int(data.get("left_days"))
    if expired is True:
        keep = "expired"
    elif left_days is not None:
        keep = f"{plural(left_days, 'day')} left"
    else:
        keep = None
    blocks = [header("⏫", f"Upload: {event_name}" if event_name else "Upload update")]
    fields = [
        field("Task", task),
        field("State", state),
        field("Device", device),
        field("Camera", m(data.get("cam_id"), 40)),
        field("Target time", time_m(data.get("target_timestamp"), tz)),
        field("Duration", duration(data.get("duration_s"))),
        field("File", m(data.get("file_name"))),
        field("Location", map_link(data.get("location"))),
        field("Kept", keep),
    ]
    blocks.append(section(fields=fields))
    details, error, videos = _task_details(data, tz)
    blocks.extend(details)
    ticket = m(data.get("ticket"), 100)
    blocks.append(
        context(
            context_parts(
                envelope,
                type_,
                f"Task {task}" if task else None,
                f"Ticket {ticket}" if ticket else None,
            )
        )
    )
    name_m = escape_mrkdwn(event_name) if event_name else "manual upload"
    return finish(blocks, f"⏫ Upload of {name_m}: " + _facts(task, device, state, error, videos))
