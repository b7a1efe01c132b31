"""Vendor JSON made safe once, where it enters (events pages, task results, uploads,
reports, push bodies). Pure: no I/O.

Everything the vendor sends is valid JSON, yet valid JSON can still hold what the
rest of the bridge cannot carry: a lone surrogate (`"\\ud800"`) cannot be encoded as
UTF-8, so the store refused the whole page and the poller never moved again. After
`clean_json` every string (keys too) encodes, carries no C0/C1 control character
(tab, newline and carriage return stay: free text may use them) and no bidi
override or isolate, and is at most `MAX_STRING_CHARS` long; non-finite floats
become null and nesting deeper than `MAX_DEPTH` is cut to null, so no encoder
downstream recurses without bound. Readers after this point (normalize, formatters,
the store) may trust that.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

import orjson

MAX_STRING_CHARS: Final = 4096
"""Longest vendor string kept; longer ones are cut and end with `…`."""
MAX_DEPTH: Final = 32
"""Deepest nesting kept (the vendor's deepest documented is 4: trend → events → types)."""
REPLACEMENT: Final = "\ufffd"
TRUNCATED: Final = "\u2026"

# Lone (unpaired) surrogates: json.loads decodes "\ud800" escapes into them.
_SURROGATES = re.compile("[\ud800-\udfff]")
# C0 except TAB/LF/CR, DEL, C1, and the bidi embeddings/overrides/isolates (Trojan Source).
_DROPPED = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# What may decode to a character that needs cleaning: one raw, or an escape of one
# (`\\b`, `\\f`, or `\\u` with C0, DEL/C1, a surrogate or a bidi control). An escaped
# backslash before such letters is a false alarm, which only costs the slow walk.
_ESCAPED = re.compile(r"\\(?:[bf]|u(?:00[0-1789]|[dD][89a-fA-F]|202[a-eA-E]|206[6-9]))")
_SUSPECT = re.compile(
    "[\ud800-\udfff\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]|"
    + _ESCAPED.pattern
)
_UNSAFE = re.compile("[\ud800-\udfff\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean_text(text: str) -> str:
    """`text` with surrogates replaced, control and bidi characters dropped, length bounded."""
    if len(text) <= MAX_STRING_CHARS and _UNSAFE.search(text) is None:
        return text  # the common case: one scan, no copy
    text = _DROPPED.sub("", _SURROGATES.sub(REPLACEMENT, text))
    if len(text) > MAX_STRING_CHARS:
        text = text[: MAX_STRING_CHARS - 1] + TRUNCATED
    return text


def clean_json(value: Any) -> Any:
    """Decoded JSON with every string cleaned, non-finite floats as null, depth cut."""
    return _walk(value, 0, True)


def loads_clean(raw: bytes | str) -> Any:
    """`json.loads` then `clean_json`: the one way vendor JSON enters the bridge.

    `ValueError` (also for undecodable bytes) and `RecursionError` (absurd nesting)
    pass through, as from `json.loads`. One scan of the whole text first: when no
    character of it (raw or escaped) can need cleaning, the fresh document is only
    checked, in place, for lengths, numbers and depth (measured on a 100-item ASCII events
    page: about 1.3 ms of cleaning beyond parsing → 0.4 ms).
    """
    # Decoded exactly as json.loads decodes bytes (UTF-8/16/32, BOM, lone surrogates).
    text = raw.decode(json.detect_encoding(raw), "surrogatepass") if isinstance(raw, bytes) else raw
    if _suspect(text):
        return _walk(json.loads(text), 0, True)
    try:
        # ~3x faster than the stdlib on a 100-item page. orjson refuses what the
        # stdlib takes (NaN literals, integers beyond 64 bits, nesting past 1,024),
        # and only those: the stdlib then decides, as before.
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return _bound(json.loads(text), 0)
    return _bound(value, 0, finite=True)


def _suspect(text: str) -> bool:
    """Whether any character of the decoded document may need cleaning."""
    if text.isascii():
        # Raw C0 is invalid inside JSON strings, so only DEL and escapes can bring one;
        # a literal search for the backslash is far quicker than a character class.
        return "\x7f" in text or ("\\" in text and _ESCAPED.search(text) is not None)
    return _SUSPECT.search(text) is not None


def _walk(value: Any, depth: int, suspect: bool) -> Any:
    kind = type(value)
    if kind is str:
        if len(value) > MAX_STRING_CHARS or (suspect and _UNSAFE.search(value)):
            return clean_text(value)
        return value
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is dict:
        if depth >= MAX_DEPTH:
            return None
        out = {}
        for key, item in value.items():
            if len(key) > MAX_STRING_CHARS or (suspect and _UNSAFE.search(key)):
                key = clean_text(key)
            out[key] = _walk(item, depth + 1, suspect)
        return out
    if kind is list:
        if depth >= MAX_DEPTH:
            return None
        return [_walk(item, depth + 1, suspect) for item in value]
    return value  # int, bool, None


def _bound(value: Any, depth: int, *, finite: bool = False) -> Any:
    """`_walk` for text with no character to clean, editing the fresh document in place.

    `finite`: the document holds no non-finite float (orjson parsed it), so a child
    container whose JSON is short and has few brackets is within bounds as it is
    and need not be walked (a 100-item page: ~0.5 ms → ~0.15 ms).
    """
    kind = type(value)
    if kind is not dict and kind is not list:
        return _walk(value, depth, False)  # a scalar document
    if depth >= MAX_DEPTH:
        return None
    # Same-key assignments only: safe while iterating a dict's keys.
    for key in value.keys() if kind is dict else range(len(value)):
        item = value[key]
        item_kind = type(item)
        if item_kind is str:
            if len(item) > MAX_STRING_CHARS:
                value[key] = clean_text(item)
        elif item_kind is dict or item_kind is list:
            if not (finite and _small_and_shallow(item, depth + 1)):
                value[key] = _bound(item, depth + 1, finite=finite)
        elif item_kind is float and not math.isfinite(item):
            value[key] = None
    if kind is dict:
        for key in [k for k in value if len(k) > MAX_STRING_CHARS]:
            value[clean_text(key)] = value.pop(key)
    return value


def _small_and_shallow(value: Any, depth: int) -> bool:
    """True if `value` (a container at `depth`) has no string over `MAX_STRING_CHARS`
    and no container reaching `MAX_DEPTH`, judged on its JSON in C: no string is
    longer than the whole text, and nesting needs a bracket per level (brackets
    inside strings only make the answer a cautious False)."""
    try:
        raw = orjson.dumps(value)
    except TypeError:  # e.g. an integer beyond 64 bits: walk it
        return False
    if len(raw) > MAX_STRING_CHARS:
        return False
    return depth + raw.count(b"{") + raw.count(b"[") <= MAX_DEPTH
