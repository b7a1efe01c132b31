"""The safety report (SPEC §5.4): a cron job in `tz` reporting the previous period.

The period follows the cron's cadence, in the report's time zone: a cron with a
fixed day of the month reports the previous calendar month, one with a single
weekday the previous ISO week (Monday to Monday), anything else the previous
local day. `previous_period` is pure (it takes `now`), so tests drive it with a
fake clock. Each period is reported once: its key is stored (kind `report`) in the
same transaction as its `report.safety`, so a second run or a restart within the
period sends nothing again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

import structlog
from apscheduler.triggers.cron import CronTrigger

from bridge.clock import Clock
from bridge.event_types import EventTypeTable
from bridge.metrics import Metrics
from bridge.normalize import report_data
from bridge.notifications import build_notification
from bridge.routing import route
from bridge.settings import SafetyReportPoll, Settings
from bridge.store.base import IngestTx, NewNotification, Store
from bridge.upstream.client import UpstreamClient

log = structlog.get_logger(__name__)

REPORT_KIND: Final = "report"
JOB: Final = "safety_report"
Cadence = Literal["day", "week", "month"]


@dataclass(frozen=True)
class Period:
    """A reporting period: `[since, until)` in Unix seconds, and a stable key."""

    since: float
    until: float
    key: str


def cadence(cron: str) -> Cadence:
    """How long a period the cron stands for (day-of-month → month, one weekday → week)."""
    fields = cron.split()
    dom, dow = (fields[2], fields[4]) if len(fields) == 5 else ("*", "*")
    if dom not in ("*", "?") and dom.isdigit():
        return "month"
    if dow not in ("*", "?") and not any(c in dow for c in ",-/"):
        return "week"
    return "day"


def previous_period(now: float, cron: str, tz: str) -> Period:
    """The whole period before the one `now` falls in, in `tz` (pure)."""
    zone = ZoneInfo(tz)
    local = datetime.fromtimestamp(now, zone)
    today = local.replace(hour=0, minute=0, second=0, microsecond=0)
    kind = cadence(cron)
    if kind == "month":
        end = today.replace(day=1)
        start = (end - timedelta(days=1)).replace(day=1)
    elif kind == "week":
        end = today - timedelta(days=today.weekday())
        start = end - timedelta(days=7)
    else:
        end = today
        start = today - timedelta(days=1)
    # Re-attach the zone after date arithmetic so DST days are 23 or 25 hours long.
    start = start.replace(tzinfo=None).replace(tzinfo=zone)
    end = end.replace(tzinfo=None).replace(tzinfo=zone)
    return Period(start.timestamp(), end.timestamp(), f"{kind}:{start.date().isoformat()}@{tz}")


def cron_trigger(cfg: SafetyReportPoll) -> CronTrigger:
    """The APScheduler trigger for `poll.safety_report.cron` in its `tz`."""
    return CronTrigger.from_crontab(cfg.cron, timezone=ZoneInfo(cfg.tz))


class SafetyReporter:
    """Fetches the previous period's report and stores one `report.safety` for it."""

    job = JOB

    def __init__(
        self,
        settings: Settings,
        store: Store,
        client: UpstreamClient,
        clock: Clock,
        metrics: Metrics,
        table: EventTypeTable,
    ) -> None:
        self._settings = settings
        self._cfg = settings.poll.safety_report
        self._store = store
        self._client = client
        self._clock = clock
        self._metrics = metrics
        self._table = table

    async def run_once(self) -> dict[str, Any] | None:
        """Report the previous period unless already reported; the stored data or None."""
        period = previous_period(self._clock.now(), self._cfg.cron, self._cfg.tz)
        if await self._store.get_json(REPORT_KIND, period.key) is not None:
            return None
        # The vendor's since/until are inclusive: the period's last second is until - 1.
        report = await self._client.safety_report(
            since=int(period.since), until=int(period.until) - 1, tz=self._cfg.tz
        )
        data = report_data(
            report, since=period.since, until=period.until, tz=self._cfg.tz, table=self._table
        )
        now = self._clock.now()
        n = build_notification(
            "report.safety", data, base_url=self._settings.upstream.base, now=now
        )
        stored = False

        async def work(tx: IngestTx) -> None:
            nonlocal stored
            stored = False
            if await tx.get_json(REPORT_KIND, period.key) is not None:
                return  # a concurrent run got there first
            await tx.put_json(REPORT_KIND, period.key, {"notification_id": n.id, "at": now})
            await tx.add_notifications([NewNotification(n, route(self._settings.targets, n))])
            stored = True

        await self._store.ingest(work)
        if not stored:
            return None
        self._metrics.notifications.labels(type=n.type).inc()
        self._metrics.poll_runs.labels(job=JOB, outcome="success").inc()
        log.info("safety report", period=period.key, total_events=data["total_events"])
        return data
