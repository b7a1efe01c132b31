"""The console target (SPEC §6.4): one JSON line per notification, for the demo.

Lines go to stdout (or a given stream) and are flushed at once, so `fleet-bridge
demo | jq` shows notifications as they flow. The stream is looked up per send when
none is given, so a replaced `sys.stdout` (pytest's capsys, a redirect) is honoured.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from bridge.settings import ConsoleTarget
from bridge.store.base import Delivery
from bridge.targets.base import SendResult


class ConsoleSender:
    """Writes each notification's body as one line to a text stream."""

    def __init__(self, cfg: ConsoleTarget, stream: TextIO | None = None) -> None:
        self.name = cfg.name
        self._stream = stream

    async def start(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Flush what was written (the stream itself is not ours to close)."""
        with contextlib.suppress(OSError, ValueError):
            self._out().flush()

    async def send(self, delivery: Delivery, envelope: Mapping[str, Any], body: str) -> SendResult:
        """Write one line; a broken stream is a retryable failure, never an exception."""
        # Compact JSON has no raw line breaks, and in any valid JSON they can only be
        # whitespace between tokens: replacing them keeps the value and one line.
        line = body.replace("\r", " ").replace("\n", " ")
        out = self._out()
        try:
            try:
                out.write(line + "\n")
            except UnicodeEncodeError:
                # A stream that cannot encode the text (PYTHONIOENCODING=ascii) still
                # gets the same JSON value, with \uXXXX escapes.
                out.write(json.dumps(json.loads(body), separators=(",", ":")) + "\n")
            out.flush()
        except (OSError, ValueError) as err:  # broken pipe, closed stream
            return SendResult(ok=False, error=f"console write failed: {type(err).__name__}")
        return SendResult.success()

    def _out(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stdout
