"""Validating notifications against the envelope's JSON Schema (SPEC §3), for the tests.

`bridge/schemas/notification.schema.json` is the contract receivers can validate
against, shipped as package data; the tests validate every notification the code
builds with `validate_envelope`. `jsonschema` is a dev-only dependency: this module
lives with the tests, not in the runtime package.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from typing import Any

import jsonschema  # type: ignore[import-untyped]

SCHEMA_RESOURCE = "schemas/notification.schema.json"


class EnvelopeInvalid(ValueError):
    """An envelope does not match the schema; `problems` has one `path: message` each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("notification does not match the schema: " + "; ".join(problems))
        self.problems = problems


@cache
def _schema_text() -> str:
    return resources.files("bridge").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")


def load_schema() -> dict[str, Any]:
    """The envelope schema as a fresh dict (callers may modify their copy)."""
    schema: dict[str, Any] = json.loads(_schema_text())
    return copy.deepcopy(schema)


@cache
def _validator() -> Any:
    cls = jsonschema.Draft202012Validator
    schema = json.loads(_schema_text())
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(envelope)"


def validate_envelope(envelope: Any) -> None:
    """Raise `EnvelopeInvalid` naming each offending path unless `envelope` is valid."""
    errors = sorted(_validator().iter_errors(envelope), key=lambda e: list(e.absolute_path))
    if not errors:
        return
    problems: list[str] = []
    for err in errors:
        # if/then failures nest the real cause; report the deepest, most specific ones.
        leaves = _leaves(err)
        problems.extend(f"{_path(e.absolute_path)}: {e.message}" for e in leaves)
    raise EnvelopeInvalid(list(dict.fromkeys(problems)))


def _leaves(err: Any) -> list[Any]:
    if not err.context:
        return [err]
    out: list[Any] = []
    for sub in err.context:
        out.extend(_leaves(sub))
    return out
