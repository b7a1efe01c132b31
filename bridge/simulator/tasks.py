"""videoClip tasks: their state timeline, ack messages and StorageList items.

A task's whole life is fixed when it is created (which cameras fail, with which
code), and its state at any moment is computed from the simulator clock, so no
background job has to drive it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bridge.simulator.data import CLIP_TYPE, Device

UPCOMING, PROCESSING, SUCCESS, FAILED, CLIPPING, UPLOADING, PARTIAL = range(7)
TERMINAL_STATES = frozenset({SUCCESS, FAILED, PARTIAL})
TASK_STATE_NAMES = {
    UPCOMING: "Upcoming",
    PROCESSING: "Processing",
    SUCCESS: "Success",
    FAILED: "Failed",
    CLIPPING: "Clipping file",
    UPLOADING: "Uploading file",
    PARTIAL: "Partial Success",
}
CAMERA_CODES = {
    "D_E20001": "Video is not existing",
    "D_E20002": "Videos merges fail",
    "D_E20003": "Clip process is busy",
    "D_E20004": "Device is busy on uploading events",
    "D_E20005": "Failed to get ticket from server",
    "D_E20006": "2nd SDCard is unmounted",
    "D_E20007": "The task is finished but failed",
    "D_E20009": "Insufficient internal flash storage space",
    "D_E20010": "Upload time expired",
}
OK_CODE = "D_S00000"
STATE_NUMBER_NAMES = {
    0: "Preparing to clip",
    1: "Starting clipping",
    2: "Clipping successful",
    3: "Clipping failed",
    4: "Video not found",
    5: "Preparing to upload",
    6: "Uploading success",
    7: "Upload time expired",
}
# What a healthy camera reports while the task is in each state.
_CAMERA_STATE_NUMBER = {
    UPCOMING: 0,
    PROCESSING: 1,
    CLIPPING: 2,
    UPLOADING: 5,
    SUCCESS: 6,
    PARTIAL: 6,
}
RETENTION_DAYS = 30  # an assumption: how long uploaded clips are kept


def failed_state_number(code: str) -> int:
    """The per-camera `state_number` a camera error code ends in."""
    return {"D_E20001": 4, "D_E20010": 7}.get(code, 3)


@dataclass(eq=False)
class ClipTask:
    """One `POST /V2/event/videoClip/{sn}` request and its fate."""

    task_id: str
    device: Device
    cam_id: str  # as requested ("ALL" or one camera)
    cameras: tuple[str, ...]  # what cam_id resolved to
    file_name: str
    target_timestamp: int
    duration: int
    single_event: bool
    created_at: float
    step_s: float
    lat: float
    lng: float
    failures: dict[str, str] = field(default_factory=dict)  # camera -> error code
    ticket: str | None = None  # the uploaded event, once the task succeeded
    video_id: int | None = None
    finalized: bool = False  # the terminal state has been acted on
    reported_state: int = -1  # the last state pushed as TASK_UPDATE

    @property
    def ok_cameras(self) -> tuple[str, ...]:
        return tuple(c for c in self.cameras if c not in self.failures)

    @property
    def timeline(self) -> list[tuple[int, float]]:
        """(state, time it is reached), in order: 0→1→4→5→2 or 6, or 0→1→3."""
        if not self.ok_cameras:
            states = [UPCOMING, PROCESSING, FAILED]
        else:
            states = [UPCOMING, PROCESSING, CLIPPING, UPLOADING]
            states.append(PARTIAL if self.failures else SUCCESS)
        return [(s, self.created_at + i * self.step_s) for i, s in enumerate(states)]

    @property
    def terminal_at(self) -> float:
        return self.timeline[-1][1]

    def _reached(self, now: float) -> list[tuple[int, float]]:
        return [(s, t) for s, t in self.timeline if t <= now]

    def state_at(self, now: float) -> int:
        return self._reached(now)[-1][0]

    def _ack(self, step: int, state: int, at: float) -> dict[str, Any]:
        # Cameras fail at the clipping stage (the third step of either timeline).
        failing = step >= 2 and bool(self.failures)
        progress = []
        for cam in self.cameras:
            code = self.failures.get(cam) if failing else None
            number = failed_state_number(code) if code else _CAMERA_STATE_NUMBER[state]
            progress.append(
                {
                    "camId": cam,
                    "state": STATE_NUMBER_NAMES[number],
                    "report_at": int(at),
                    "state_number": number,
                    "code": code or OK_CODE,
                }
            )
        code = next(iter(self.failures.values())) if failing else OK_CODE
        return {
            "code": code,
            "desc": CAMERA_CODES.get(code, TASK_STATE_NAMES[state]),
            "state": TASK_STATE_NAMES[state],
            "report_at": int(at),
            "state_desc": f"({step + 1}/{len(self.timeline)})",
            "progress_status": progress,
        }

    def history(self, now: float) -> list[dict[str, Any]]:
        """Every ack message so far, oldest first (`process_history`)."""
        return [self._ack(i, s, t) for i, (s, t) in enumerate(self._reached(now))]

    def result(self, now: float) -> dict[str, Any]:
        """The `data` of `GET /V2/event/taskResult/{taskId}`."""
        history = self.history(now)
        state = self.state_at(now)
        return {
            "task_id": self.task_id,
            "task_state": state,
            "task_state_desc": TASK_STATE_NAMES[state],
            "device_cid": self.device.device_cid,
            "serial_number": self.device.serial_number,
            "cam_id": self.cam_id,
            "file_name": self.file_name,
            "target_timestamp": self.target_timestamp,
            "duration_in_seconds": self.duration,
            "created_at": int(self.created_at),
            "ticket": self.ticket if self.finalized else None,
            "last_ack_message": history[-1],
            "process_history": history,
        }

    def storage_item(self, now: float) -> dict[str, Any]:
        """One item of `GET /V2/event/StorageList`."""
        state = self.state_at(now)
        age_days = int((now - self.created_at) // 86400)
        left_days = max(0, RETENTION_DAYS - age_days)
        return {
            "task_id": self.task_id,
            "task_state": state,
            "type": CLIP_TYPE,
            "device_cid": self.device.device_cid,
            "serial_number": self.device.serial_number,
            "event_name": self.file_name,
            "file_name": self.file_name,
            "cam_id": self.cam_id,
            "driver_name": self.device.driver_name,
            "vehicle_name": self.device.vehicle_name,
            "expired": left_days == 0,
            "left_days": left_days,
            "lat": self.lat,
            "lng": self.lng,
            "video_id": self.video_id if self.finalized else None,
            "tag": 0,
            "trip_id": self.device.trip_id(self.target_timestamp),
            "ticket": self.ticket if self.finalized else None,
            "time_lapse": False,
            "uploadDate": int(self.created_at),
            "last_ack_message": self.history(now)[-1],
        }

    def matches_keyword(self, keyword: str) -> bool:
        """StorageList `keyword`: file name, asset id, vehicle name or driver name."""
        kw = keyword.casefold()
        hay = (
            self.file_name,
            str(self.device.car_id),
            self.device.vehicle_name,
            self.device.driver_name,
        )
        return any(kw in h.casefold() for h in hay)
