"""What the bridge lets through to the vendor in a path or a form field. Pure.

API callers choose a clip's device and file name and the ticket to discard; each
is checked against a strict pattern before a request is built, so nothing like
`..`, a newline or a bidi override ever reaches the vendor. `bridge/openapi.json`
carries the same patterns (ECMA-262 syntax that Python's `re` reads alike).
"""

from __future__ import annotations

import re
from typing import Final

UUID_PATTERN: Final = "[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
TICKET_PATTERN: Final = f"^{UUID_PATTERN}$"
"""An event ticket: the vendor's UUID form."""
SERIAL_PATTERN: Final = f"^(?:[A-Za-z0-9]{{1,64}}|{UUID_PATTERN})$"
"""A device for `videoClip/{sn}`: a serial number (letters and digits) or its CID (a UUID)."""
FILE_NAME_PATTERN: Final = r"^[A-Za-z0-9_()-]+(?:[ .][A-Za-z0-9_()-]+)*$"
"""A clip's file name: words of letters, digits, `_`, `-`, `(`, `)` joined by single
spaces or dots (so never `..`, a leading dot or a trailing space)."""

_TICKET = re.compile(TICKET_PATTERN)
_SERIAL = re.compile(SERIAL_PATTERN)
_FILE_NAME = re.compile(FILE_NAME_PATTERN)


def is_ticket(value: str) -> bool:
    return _TICKET.fullmatch(value) is not None


def is_serial(value: str) -> bool:
    return _SERIAL.fullmatch(value) is not None


def is_file_name(value: str) -> bool:
    return _FILE_NAME.fullmatch(value) is not None
