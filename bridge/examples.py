"""One real example notification per type, for docs/notifications.md.

Every example is built by the code the service runs: vendor-shaped input from the
simulator (`bridge.simulator`, called in-process) goes through the same builders
the pollers and trackers use (`normalize_event`, `wants_videos`, `with_videos`,
`event_videos`, `decide`, `event_data_with_revision`, `clip_data`, `clip_type`,
`upload_data`, `report_data`, `group_data`, `build_notification`). A fixed seed and a fake clock
make the output byte-for-byte stable.

The one thing that is not as in production is the notification id: the service
draws its 80 random bits from `os.urandom`; here they come from a hash of the
example's name, so the ids do not change between runs. They keep the format.

`scripts/notification-examples` prints `render_markdown()`; the tests check that
docs/notifications.md holds exactly that text and that every envelope validates.
"""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import UTC, datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

from bridge.clips import tracked_clip_data
from bridge.clock import FakeClock
from bridge.dedup import decide, event_data_with_revision
from bridge.event_types import EventTypeTable
from bridge.normalize import clip_type, event_videos, normalize_event, report_data, upload_data
from bridge.notifications import Notification, build_notification
from bridge.report import previous_period
from bridge.routing import TEST_TYPE
from bridge.settings import NOTIFICATION_TYPES, EventsPoll
from bridge.simulator.analytics import safety_report
from bridge.simulator.app import video_files
from bridge.simulator.config import SimulatorConfig
from bridge.simulator.core import Simulator
from bridge.simulator.data import Device
from bridge.simulator.tasks import ClipTask
from bridge.storm import GROUP_TYPE, group_data, key_of
from bridge.video_links import wants_videos, with_videos

BASE_URL: Final = "https://fleet.example.com"
"""`source.base_url`: the vendor portal the bridge reads (`upstream.base_url`)."""

SEED: Final = 1
START: Final = datetime(2026, 11, 24, 6, 0, tzinfo=UTC).timestamp()
"""The simulator's (and the bridge's) clock at the start: 07:00 in Amsterdam."""

VIDEO_LINKS_MAX_AGE_S: Final = EventsPoll().video_links_max_age_s
REPORT_CRON: Final = "0 7 * * *"
REPORT_TZ: Final = "Europe/Amsterdam"
TEST_TARGET: Final = "ops-webhook"

TYPES: Final[tuple[str, ...]] = (*NOTIFICATION_TYPES, GROUP_TYPE)
"""Every notification type, in the order the examples are shown."""

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_FENCE = "```"


def example_id(type_: str, now: float) -> str:
    """`ntf_` + a ULID of `now` whose 80 "random" bits are a hash of `type_`."""
    ms = int(now * 1000)
    rand = int.from_bytes(hashlib.sha256(f"fleet-bridge example {type_}".encode()).digest()[:10])
    value = (ms << 80) | rand
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "ntf_" + "".join(reversed(chars))


def _notify(type_: str, data: dict[str, Any], now: float) -> Notification:
    return build_notification(
        type_, data, base_url=BASE_URL, now=now, notification_id=example_id(type_, now)
    )


def _clip_record(task: ClipTask) -> dict[str, Any]:
    """What `ClipTracker.request` keeps of a videoClip request."""
    return {
        "task_id": task.task_id,
        "serial_number": task.device.serial_number,
        "cam_id": task.cam_id,
        "file_name": task.file_name,
        "target_timestamp": task.target_timestamp,
        "duration_s": task.duration,
    }


def _video_detail(sim: Simulator, ticket: str) -> list[dict[str, Any]]:
    """`POST /V2/event/GetVideoDetail` → `videos`, as the simulator answers it (no HTTP)."""
    event = sim.log.get(ticket)
    if event is None:
        raise LookupError(ticket)
    return video_files(sim, event, origin=BASE_URL)


def _other_device(sim: Simulator, used: Device) -> Device:
    return next(d for d in sim.devices if d.device_cid != used.device_cid)


def build_examples() -> list[Notification]:
    """One notification per type (in `TYPES` order), built as the service builds them."""
    clock = FakeClock(START)
    sim = Simulator(SimulatorConfig(seed=SEED, backlog=12, rate=0.0), clock=clock)
    table = EventTypeTable()
    out: dict[str, Notification] = {}

    # report.safety: the 07:00 Amsterdam cron reports the previous local day.
    clock.advance(2.031)
    period = previous_period(clock.now(), REPORT_CRON, REPORT_TZ)
    # The vendor's since/until are inclusive (as SafetyReporter asks for them).
    window = sim.log.window(int(period.since), int(period.until) - 1)
    report = safety_report(window, ZoneInfo(REPORT_TZ))
    data = report_data(report, since=period.since, until=period.until, tz=REPORT_TZ, table=table)
    out["report.safety"] = _notify("report.safety", data, clock.now())

    # event.created: a forward-collision warning arrives, its video still uploading.
    clock.advance(8)
    item = copy.deepcopy(sim.add_event(type=11, video=True, media_delay_s=90))
    clock.advance(3.12)
    ev = normalize_event(item, table)
    decision = decide(None, ev.ticket, ev.fingerprint, clock.now())
    data = event_data_with_revision(ev.data, decision.revision, decision.changed)
    out["event.created"] = _notify("event.created", data, clock.now())

    # event.updated: a later poll sees the upload finished, and fetches the video links.
    clock.advance(116.405)
    settled = sim.item(ev.ticket)
    if settled is None:
        raise LookupError(ev.ticket)
    ev2 = normalize_event(copy.deepcopy(settled), table)
    if not wants_videos(ev2, decision.ticket_state, clock.now(), VIDEO_LINKS_MAX_AGE_S):
        raise RuntimeError("the example's upload should fetch its video links")
    ev2 = with_videos(ev2, event_videos(_video_detail(sim, ev2.ticket)))
    decision = decide(decision.ticket_state, ev2.ticket, ev2.fingerprint, clock.now())
    data = event_data_with_revision(ev2.data, decision.revision, decision.changed)
    out["event.updated"] = _notify("event.updated", data, clock.now())

    # clip.requested / clip.updated / clip.completed: 30 s around the event, all cameras.
    device = sim.device(str(item["device_cid"]))
    if device is None:
        raise LookupError(item["device_cid"])
    clock.advance(10.2)
    task = sim.create_task(
        device,
        cam_id="ALL",
        file_name="fcw-followup",
        target_timestamp=int(item["timestamp"]),
        duration=30,
        single_event=True,
    )
    record = _clip_record(task)
    out["clip.requested"] = _notify(
        "clip.requested", tracked_clip_data(record, {"task_id": task.task_id}), clock.now()
    )
    clock.advance(6.5)
    result = task.result(sim.now())
    out["clip.updated"] = _notify(
        clip_type(result["task_state"]), tracked_clip_data(record, result), clock.now()
    )
    clock.advance(15.25)
    sim.refresh()  # the task finished: its upload became an event with a ticket
    result = task.result(sim.now())
    videos = _video_detail(sim, str(result["ticket"]))
    out["clip.completed"] = _notify(
        clip_type(result["task_state"]),
        tracked_clip_data(record, result, videos=videos),
        clock.now(),
    )

    # clip.failed: the device's clip process is busy.
    other = _other_device(sim, device)
    sim.fail_next_clips("D_E20003")
    clock.advance(4.7)
    failing = sim.create_task(
        other,
        cam_id="ALL",
        file_name="harsh-braking-review",
        target_timestamp=int(clock.now()) - 600,
        duration=20,
        single_event=True,
    )
    clock.advance(11.3)
    sim.refresh()
    result = failing.result(sim.now())
    out["clip.failed"] = _notify(
        clip_type(result["task_state"]),
        tracked_clip_data(_clip_record(failing), result),
        clock.now(),
    )

    # upload.updated: a manual upload in StorageList moved to "uploading".
    clock.advance(30)
    upload = sim.create_task(
        other,
        cam_id="C_F",
        file_name="depot-exit",
        target_timestamp=int(clock.now()) - 3600,
        duration=60,
        single_event=False,
    )
    clock.advance(16.015)
    storage_item = upload.storage_item(sim.now())
    out["upload.updated"] = _notify("upload.updated", upload_data(storage_item), clock.now())

    # bridge.test: POST /api/v1/targets/ops-webhook/test.
    clock.advance(120.5)
    data = {
        "target": TEST_TARGET,
        "message": f"fleet-bridge test notification for target {TEST_TARGET}",
    }
    out[TEST_TYPE] = _notify(TEST_TYPE, data, clock.now())

    # event.group: a lane-departure storm on one vehicle (`group.by: [vehicle.id]`,
    # `max_items: 3`), sent as one once the group's interval has passed.
    members = []
    for i in range(5):
        clock.advance(47.5)
        lane = copy.deepcopy(sim.add_event(type=22, device_cid=device.device_cid, video=False))
        clock.advance(3.0)
        ev = normalize_event(lane, table)
        decision = decide(None, ev.ticket, ev.fingerprint, clock.now())
        data = event_data_with_revision(ev.data, decision.revision, decision.changed)
        members.append(
            build_notification(
                "event.created",
                data,
                base_url=BASE_URL,
                now=clock.now(),
                notification_id=example_id(f"{GROUP_TYPE} member {i}", clock.now()),
            )
        )
    clock.advance(60)
    key = key_of(["vehicle.id"], members[0].data)
    out[GROUP_TYPE] = _notify(GROUP_TYPE, group_data("grouped", key, members, 3), clock.now())

    missing = [t for t in TYPES if t not in out or out[t].type != t]
    if missing:
        raise RuntimeError(f"examples did not produce: {', '.join(missing)}")
    return [out[t] for t in TYPES]


def envelope_json(notification: Notification) -> str:
    """An envelope as shown in the docs: indented JSON, UTF-8 kept."""
    return json.dumps(notification.envelope(), indent=2, ensure_ascii=False)


def render_markdown() -> str:
    """The examples section of docs/notifications.md: one heading and JSON block each."""
    parts = []
    for n in build_examples():
        parts.append(f"### `{n.type}`\n\n{_FENCE}json\n{envelope_json(n)}\n{_FENCE}\n")
    return "\n".join(parts)


BEGIN_MARKER: Final = "<!-- examples:begin -->"
END_MARKER: Final = "<!-- examples:end -->"


def doc_section(doc: str) -> str:
    """The text between the examples markers of docs/notifications.md (without them)."""
    start, end = doc.find(BEGIN_MARKER), doc.find(END_MARKER)
    if start < 0 or end < start:
        raise ValueError(f"the doc lacks {BEGIN_MARKER} … {END_MARKER}")
    return doc[start + len(BEGIN_MARKER) : end].strip("\n") + "\n"


def replace_section(doc: str, section: str) -> str:
    """`doc` with the text between the examples markers replaced by `section`."""
    doc_section(doc)  # raises without the markers
    head, _, rest = doc.partition(BEGIN_MARKER)
    _, _, tail = rest.partition(END_MARKER)
    return f"{head}{BEGIN_MARKER}\n\n{section.strip(chr(10))}\n\n{END_MARKER}{tail}"
