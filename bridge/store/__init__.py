"""Durable state: the `Store` protocol (base.py) and its implementations.

`open_store` picks the implementation from the configured URL with an explicit
`match`, so adding a backend is one visible branch, not an import side effect.
"""

from __future__ import annotations

from bridge.clock import Clock
from bridge.settings import StoreSettings
from bridge.store.base import Store


def open_store(settings: StoreSettings, clock: Clock) -> Store:
    """The store for `settings.url` (not yet opened: call `await store.open()`)."""
    match settings.kind:
        case "sqlite":
            # Imported here so a PostgreSQL deployment never loads aiosqlite (and
            # vice versa, later).
            from bridge.store.sqlite import SqliteStore

            return SqliteStore(settings.sqlite_path, clock)
        case "postgresql":
            raise NotImplementedError("PostgreSQL store arrives in a later release")


__all__ = ["open_store"]
