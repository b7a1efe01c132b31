"""`report.safety` as a Slack digest: totals, severities, trips, a trend. Pure."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import tzinfo
from typing import Any, Final

from bridge.display import as_int, as_list, clean, count_text, dig, zone
from bridge.markup import escape_mrkdwn
from bridge.slack_format.blocks import (
    NOTHING,
    SlackMessage,
    context,
    context_parts,
    field,
    finish,
    header,
    list_sections,
    m,
    section,
    time_m,
)
from bridge.slack_format.events import CATEGORY_WORDS, severity_counts

_SPARKS: Final = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[int]) -> str:
    """`▁▃█`-style bars for counts (empty for no values)."""
    if not values:
        return ""
    top = max(values)
    if top <= 0:
        return _SPARKS[0] * len(values)
    return "".join(_SPARKS[min(len(_SPARKS) - 1, v * (len(_SPARKS) - 1) // top)] for v in values)


def _trend(data: Mapping[str, Any]) -> tuple[dict[str, Counter[str]], Counter[str], Counter[str]]:
    """Per date severity counts (and "total"), severity totals, event type totals."""
    days: dict[str, Counter[str]] = {}
    severities: Counter[str] = Counter()
    types: Counter[str] = Counter()
    for series in as_list(data.get("trend"))[:20]:
        for day in as_list(dig(series, "events"))[:400]:
            date = clean(dig(day, "date"), 20) or "?"
            counts = days.setdefault(date, Counter())
            for level in ("severe", "moderate", "minor"):
                n = as_int(dig(day, "severity", level)) or 0
                if n > 0:
                    counts[level] += n
                    severities[level] += n
            for t in as_list(dig(day, "types"))[:200]:
                n = as_int(dig(t, "count")) or 0
                if n > 0:
                    counts["total"] += n
                    types[clean(dig(t, "name"), 60) or "Unknown"] += n
    return days, severities, types


def report_message(
    envelope: Mapping[str, Any], type_: str, data: Mapping[str, Any], tz: tzinfo
) -> SlackMessage:
    """The safety report of one period, shown in the report's own zone."""
    # The period is a day (week, …) in the report's own zone: show it there.
    report_tz = data.get("tz")
    period_tz = zone(report_tz, fallback=tz)
    since = time_m(data.get("since"), period_tz) or "?"
    until = time_m(data.get("until"), period_tz) or "?"
    categories = data.get("categories")
    total = count_text(data.get("total_events")) or NOTHING
    blocks = [
        header("📊", "Safety report"),
        section(f"*Period:* {since} → {until}"),
        section(
            fields=[field("Total events", total)]
            + [
                field(word, count_text(dig(categories, key)))
                for key, word in CATEGORY_WORDS.items()
            ]
        ),
    ]
    days, severities, types = _trend(data)
    if severities:
        blocks.append(section(f"*By severity:* {severity_counts(severities)}"))
    trips = data.get("trips")
    blocks.append(
        section(
            fields=[
                field("Trips", count_text(dig(trips, "total_trips"))),
                field("Distance", count_text(dig(trips, "total_distance"))),
                field("Driving time", count_text(dig(trips, "total_time"))),
                field("Idling", count_text(dig(trips, "total_idling"))),
            ]
        )
    )
    if types:
        top = " · ".join(f"{escape_mrkdwn(name)} {n:,}" for name, n in types.most_common(5))
        blocks.append(section(f"*Most frequent:* {top}"))
    if days:
        dates = sorted(days)
        totals = [days[d]["total"] for d in dates]
        lines = [
            f"`{escape_mrkdwn(d)}` {days[d]['total']:,} — {severity_counts(days[d])}" for d in dates
        ]
        blocks.extend(list_sections(f"Trend {sparkline(totals[-60:])}", lines, max_blocks=3))
    zone_name = m(report_tz, 64)
    blocks.append(
        context(context_parts(envelope, type_, f"report zone {zone_name}" if zone_name else None))
    )
    per_category = ", ".join(
        f"{word} {count_text(dig(categories, key)) or 0}" for key, word in CATEGORY_WORDS.items()
    )
    text = f"📊 Safety report {since} → {until}: {total} events ({per_category})"
    trip_count = count_text(dig(trips, "total_trips"))
    if trip_count:
        text += f"; {trip_count} trips"
    return finish(blocks, text)
