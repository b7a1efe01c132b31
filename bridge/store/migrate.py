"""Versioned schema migrations, shared by every store dialect.

Migrations are numbered files, `migrations/<dialect>/NNNN_name.sql`, applied in
order; each store records the applied versions in its own `schema_version` table.
This module only loads and orders them; a store supplies a `MigrationDriver` that
applies one migration atomically in its own dialect (`sqlite.SqliteStore` here,
a PostgreSQL store later with `migrations/postgresql/`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Protocol

from bridge.store.base import StoreUnavailable

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(StoreUnavailable):
    """The schema cannot be brought to this release's version."""


@dataclass(frozen=True)
class Migration:
    """One schema step: its version, name and SQL text."""

    version: int
    name: str
    sql: str


class MigrationDriver(Protocol):
    """How one dialect reads and advances its schema version."""

    async def applied_version(self) -> int:
        """The highest applied version (0 for an empty database); creates the table."""
        ...

    async def apply(self, migration: Migration) -> bool:
        """Apply one migration and record it, atomically; False if already applied.

        Drivers re-check the version inside their transaction, so two processes
        opening the same database at once apply each step once.
        """
        ...


def load_migrations(dialect: str) -> list[Migration]:
    """The migrations of a dialect, ordered; versions must run 1, 2, 3… without gaps."""
    folder = resources.files("bridge.store").joinpath("migrations", dialect)
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match is None:
            continue
        found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(f"{dialect} migrations must be numbered 1..n, found {versions}")
    return found


async def migrate(driver: MigrationDriver, migrations: Sequence[Migration]) -> list[int]:
    """Apply the migrations the database lacks; returns the versions applied now."""
    current = await driver.applied_version()
    latest = migrations[-1].version if migrations else 0
    if current > latest:
        # A newer release has run against this database; running old code on a
        # newer schema could corrupt it, so refuse rather than guess.
        raise MigrationError(
            f"database schema version {current} is newer than this release supports "
            f"({latest}); upgrade fleet-bridge"
        )
    applied = []
    for migration in migrations:
        if migration.version > current and await driver.apply(migration):
            applied.append(migration.version)
    return applied
