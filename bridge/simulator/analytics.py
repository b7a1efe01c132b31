"""`GET /V2/analytics/safety`: the safety report, computed from the simulator's events."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from bridge.simulator.data import CATEGORIES, TYPES_BY_CODE, Event


def _trip_stats(trip_id: int) -> tuple[float, int, int]:
    """(distance km, driving s, idling s) of a trip: made up, but stable per trip id."""
    distance = 5.0 + (trip_id * 7919) % 1150 / 10
    driving = 600 + (trip_id * 104_729) % 7200
    return distance, driving, driving // 8


def safety_report(events: Iterable[Event], tz: ZoneInfo) -> dict[str, Any]:
    """`{summary: {event_category, trip}, trend}` over `events`, dates in `tz`."""
    per_category: Counter[str] = Counter()
    trips: set[int] = set()
    # category -> date -> (type counts, severity counts)
    trend: dict[str, dict[str, tuple[Counter[int], Counter[int]]]] = {
        c: defaultdict(lambda: (Counter(), Counter())) for c in CATEGORIES
    }
    for event in events:
        item = event.item
        trips.add(item["trip_id"])
        etype = TYPES_BY_CODE.get(item["type"])
        if etype is None or etype.category is None:
            continue  # Start Up, clips: not safety events
        per_category[etype.category] += 1
        date = datetime.fromtimestamp(item["timestamp"], tz).date().isoformat()
        types, severities = trend[etype.category][date]
        types[item["type"]] += 1
        severities[item["severity_level"]] += 1

    stats = [_trip_stats(t) for t in trips]
    return {
        "summary": {
            "event_category": [{"category": c, "count": per_category[c]} for c in CATEGORIES],
            "trip": {
                "total_distance": round(sum(s[0] for s in stats), 1),
                "total_idling": sum(s[2] for s in stats),
                "total_time": sum(s[1] for s in stats),
                "total_trips": len(trips),
            },
        },
        "trend": [
            {
                "trend_type": category,
                "events": [
                    {
                        "date": date,
                        "types": [{"type": t, "count": n} for t, n in sorted(types.items())],
                        "severity": {f"lv_{lv}": severities[lv] for lv in (1, 2, 3)},
                    }
                    for date, (types, severities) in sorted(by_date.items())
                ],
            }
            for category, by_date in trend.items()
        ],
    }
