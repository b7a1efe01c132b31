"""A real PostgreSQL for the tests: throwaway databases on the server `scripts/ensure-services`
made sure of (127.0.0.1:5432 unless BRIDGE_TEST_PG names another).

Each test run creates databases with random names and drops them at the end, so
several runs (other checkouts, CI) can share one server at the same time.
"""

from __future__ import annotations

import os
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg

ADMIN_URL = os.environ.get("BRIDGE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

TABLES = (
    "notifications, deliveries, seen_tickets, cursors, kv, target_state, poll_lease, storm_groups,"
    " in_flight_shares"
)


def database_url(name: str) -> str:
    parts = urlsplit(ADMIN_URL)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def create_database(prefix: str = "fb_test") -> str:
    """A new empty database; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(ADMIN_URL, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return database_url(name)


async def drop_database(url: str) -> None:
    """Drop a database made by `create_database`, even with connections still open."""
    name = urlsplit(url).path.lstrip("/")
    conn = await asyncpg.connect(ADMIN_URL, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def truncate(url: str) -> None:
    """Empty every table of a migrated database (between contract tests)."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()
