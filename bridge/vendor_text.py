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

import math
import re
from typing import Any, Final

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
_UNSAFE = re.compile("[\ud800-\udfff\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean_text(text: str) -> str:
    """`text` with surrogates replaced, control and bidi characters dropped, length bounded."""
    if len(text) <= MAX_STRING_CHARS and _UNSAFE.search(text) is None:
        return text  # the common case: one scan, no copy
    text = _DROPPED.sub("", _SURROGATES.sub(REPLACEMENT, text))
    if len(text) > MAX_STRING_CHARS:
        text = text[: MAX_STRING_CHARS - 1] + TRUNCATED
    return text


def clean_json(value: Any, *, depth: int = 0) -> Any:
    """A copy of decoded JSON (or the same object when nothing needed cleaning)."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            return None
        return {
            clean_text(k) if isinstance(k, str) else k: clean_json(v, depth=depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list):
        if depth >= MAX_DEPTH:
            return None
        return [clean_json(v, depth=depth + 1) for v in value]
    return value  # int, bool, None
