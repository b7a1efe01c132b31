"""Vendor values as short plain text, for every message the bridge formats. Pure: no I/O.

The Slack formatter and the template filters read notification `data` through these
helpers, and they never raise: a field may be missing (a target's `redact` removed
it), of the wrong type, or absurdly long. Text comes out as one line without control
or bidi characters; lengths are measured in UTF-16 code units (an emoji counts
twice), the stricter of the counts a chat service might use. Making the text inert
in a receiver's markup is `bridge.markup`'s job, after this.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, tzinfo
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bridge.clock import parse_rfc3339

ELLIPSIS: Final = "…"
VALUE_MAX: Final = 200  # one vendor value (a name, an id) before escaping

CAMERA_NAMES: Final[Mapping[str, str]] = {
    "C_F": "Front",
    "C_I": "In-cabin",
    "C_R": "Rear",
    "C_E": "Extended (TVI)",
    "GRID": "Grid (combined)",
    "S_F_I": "Front + in-cabin",
}
"""Names of the vendor's camera ids (UPSTREAM.md "Camera ids"), as video links show them."""

# C0/C1 controls, line/paragraph separators and bidi embeddings/overrides/isolates:
# they could fake line breaks or make a name display as something else.
UNSAFE_CHARS: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


# --------------------------------------------------------------------------- readers


def dig(obj: Any, *path: str) -> Any:
    """`obj[path[0]][path[1]]…`, or None where a step is not a mapping."""
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def as_int(value: Any) -> int | None:
    """An integer (or a float that is one); None for anything else, booleans included."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def as_number(value: Any) -> float | None:
    """A finite number as a float; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value) if abs(value) < 1e300 else math.inf
    return number if math.isfinite(number) else None


def as_list(value: Any) -> Sequence[Any]:
    """`value` if it is a list or tuple, else an empty sequence."""
    return value if isinstance(value, list | tuple) else ()


# --------------------------------------------------------------------------- text


def count_text(value: Any) -> str | None:
    """A count with thousands separators (`1,234`, `12.5`); None if not a number."""
    number = as_number(value)
    if number is None:
        return None
    if number.is_integer():
        return f"{int(number):,}"
    return f"{number:,.2f}".rstrip("0").rstrip(".")


def plural(n: int, word: str) -> str:
    """`1 clip`, `3 clips`."""
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def units(text: str) -> int:
    """Length in UTF-16 code units."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def cut(text: str, limit: int) -> str:
    """The longest prefix of `text` of at most `limit` UTF-16 code units."""
    prefix = text[:limit]
    while (excess := units(prefix) - limit) > 0:
        prefix = prefix[: len(prefix) - max(1, excess // 2)]
    return prefix


def fit(text: str, limit: int) -> str:
    """`text`, or its prefix plus "…" so that it is at most `limit` code units."""
    if units(text) <= limit:
        return text
    return cut(text, limit - 1) + ELLIPSIS


def clean(value: Any, limit: int = VALUE_MAX) -> str | None:
    """A vendor value as one line of plain text (numbers as their text); None if empty."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            return None
        text = str(int(value)) if value.is_integer() and abs(value) < 2**53 else str(value)
    elif isinstance(value, str):
        # Only the start can be shown: cleaning a megabyte to show 200 characters
        # would make one hostile item slow down the whole target.
        head = value[: 2 * limit + 64]
        text = " ".join(UNSAFE_CHARS.sub(" ", head).split())
        if len(head) < len(value) and text:
            text = fit(text + ELLIPSIS, limit)
    else:
        return None
    return fit(text, limit) if text else None


def camera_name(cam_id: Any) -> str:
    """A camera's name ("Front", "In-cabin", …); an unknown id as `Camera <id>`."""
    cam = clean(cam_id, 40)
    if cam is None:
        return "Video"
    return CAMERA_NAMES.get(cam.upper(), f"Camera {cam}")


# --------------------------------------------------------------------------- times, places


def zone(tz: str | tzinfo | None, fallback: tzinfo = UTC) -> tzinfo:
    """A tzinfo from a zone name (`fallback` when unknown: formatting never fails)."""
    if isinstance(tz, tzinfo):
        return tz
    if not isinstance(tz, str) or not tz or len(tz) > 64:
        return fallback
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return fallback


def local_time(value: Any, tz: tzinfo) -> str | None:
    """An RFC 3339 instant shown in `tz`, e.g. `2025-11-25 00:00:00 CST`; None if unreadable."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        local = parse_rfc3339(value).astimezone(tz)
    except (ValueError, OverflowError, OSError):
        return None
    name = local.tzname() or ""
    if not name.isalpha():  # zones without an abbreviation say "+08": show the offset
        offset = local.strftime("%z")
        name = f"UTC{offset[:3]}:{offset[3:]}" if offset else "UTC"
    return f"{local:%Y-%m-%d %H:%M:%S} {name}"


def _coordinate(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".")


def coordinates(location: Any) -> tuple[str, str] | None:
    """`(lat, lng)` as text when `location` holds valid coordinates; else None."""
    lat, lng = as_number(dig(location, "lat")), as_number(dig(location, "lng"))
    if lat is None or lng is None or not (-90 <= lat <= 90 and -180 <= lng <= 180):
        return None
    return _coordinate(lat), _coordinate(lng)
