"""Durable state: the `Store` protocol (base.py) and its implementations.

`open_store` picks the implementation from the configured URL with an explicit
`match`, so adding a backend is one visible branch, not an import side effect.
"""

from __future__ import annotations

from bridge.clock import Clock
from bridge.settings import StoreSettings
from bridge.store.base import Store


def open_store(settings: StoreSettings, clock: Clock, *, exclusive: bool = False) -> Store:
    """The store for `settings.url` (not yet opened: call `await store.open()`).

    `exclusive` is for `run`: a SQLite file then refuses a second process (SPEC §9);
    PostgreSQL welcomes any number of replicas.
    """
    match settings.kind:
        case "sqlite":
            # Imported here so a PostgreSQL deployment never loads aiosqlite and
            # vice versa.
            from bridge.store.sqlite import SqliteStore

            return SqliteStore(settings.sqlite_path, clock, exclusive=exclusive)
        case "postgresql":
            from bridge.store.postgres import PostgresStore

            return PostgresStore(
                settings.url, clock, pool_size=settings.pool_size, lease_s=settings.lease_s
            )


__all__ = ["open_store"]
