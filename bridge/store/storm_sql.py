"""The SQL of storm control (SPEC §6.5) for both stores, argument order as in `StormQueries`.

`parked` queries repeat the partial index condition of `deliveries_parked`
(`carrier IS NULL AND state IN ('grouped', 'held')`) so both databases use it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from bridge.store.storm_tx import StormQueries

_PARKED = """
SELECT d.id, n.body, d.group_key
FROM deliveries AS d JOIN notifications AS n ON n.id = d.notification_id
WHERE d.target = {0} AND d.carrier IS NULL AND d.state IN ('grouped', 'held')
  AND d.state = {1}"""


def _json_ids(ids: Sequence[int]) -> str:
    return json.dumps([int(i) for i in ids])


def _list_ids(ids: Sequence[int]) -> list[int]:
    return [int(i) for i in ids]


SQLITE = StormQueries(
    unchecked="""
SELECT id FROM deliveries WHERE id IN (SELECT value FROM json_each(?)) AND storm_checked = 0""",
    mark_checked="""
UPDATE deliveries SET storm_checked = 1, updated_at = ?
WHERE id IN (SELECT value FROM json_each(?))""",
    park="""
UPDATE deliveries
SET state = ?1, group_key = ?2, updated_at = ?3, storm_checked = 1,
    next_attempt_at = NULL, lease_until = NULL, claim_token = NULL
WHERE id = ?4 AND state = 'in_flight'
  AND (?5 IS NULL OR (claim_token = ?5 AND lease_until >= ?3))
RETURNING id""",
    resuppress="""
UPDATE deliveries SET state = 'suppressed', updated_at = ?
WHERE id = ? AND state = 'grouped' AND carrier IS NULL""",
    get_group="SELECT last_sent_at, flush_at FROM storm_groups WHERE target = ? AND key = ?",
    put_group="""
INSERT INTO storm_groups (target, key, last_sent_at, flush_at, updated_at)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (target, key) DO UPDATE SET
    last_sent_at = excluded.last_sent_at, flush_at = excluded.flush_at,
    updated_at = excluded.updated_at""",
    due_groups="""
SELECT key FROM storm_groups WHERE target = ? AND flush_at <= ? ORDER BY flush_at, key""",
    next_flush="SELECT min(flush_at) FROM storm_groups WHERE target = ?",
    parked=_PARKED.format("?", "?") + " ORDER BY d.id",
    parked_key=_PARKED.format("?", "?") + " AND d.group_key = ? ORDER BY d.id",
    carry="""
UPDATE deliveries SET carrier = ?, updated_at = ?
WHERE id IN (SELECT value FROM json_each(?))""",
    release="""
UPDATE deliveries SET state = 'pending', next_attempt_at = ?1, updated_at = ?1, storm_checked = 1
WHERE id = ?2 AND state = 'grouped' AND carrier IS NULL""",
    neighbours="""
SELECT n.body FROM notifications AS n
WHERE n.event_at BETWEEN ? AND ?
  AND EXISTS (SELECT 1 FROM deliveries AS d WHERE d.notification_id = n.id AND d.target = ?)
ORDER BY n.event_at LIMIT 1000""",
    ids=_json_ids,
)

POSTGRES = StormQueries(
    unchecked="SELECT id FROM deliveries WHERE id = ANY($1::bigint[]) AND storm_checked = 0",
    mark_checked="""
UPDATE deliveries SET storm_checked = 1, updated_at = $1 WHERE id = ANY($2::bigint[])""",
    park="""
UPDATE deliveries
SET state = $1, group_key = $2, updated_at = $3, storm_checked = 1,
    next_attempt_at = NULL, lease_until = NULL, claim_token = NULL
WHERE id = $4 AND state = 'in_flight'
  AND ($5::text IS NULL OR (claim_token = $5 AND lease_until >= $3))
RETURNING id""",
    resuppress="""
UPDATE deliveries SET state = 'suppressed', updated_at = $1
WHERE id = $2 AND state = 'grouped' AND carrier IS NULL""",
    get_group="SELECT last_sent_at, flush_at FROM storm_groups WHERE target = $1 AND key = $2",
    put_group="""
INSERT INTO storm_groups (target, key, last_sent_at, flush_at, updated_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (target, key) DO UPDATE SET
    last_sent_at = excluded.last_sent_at, flush_at = excluded.flush_at,
    updated_at = excluded.updated_at""",
    due_groups="""
SELECT key FROM storm_groups WHERE target = $1 AND flush_at <= $2 ORDER BY flush_at, key""",
    next_flush="SELECT min(flush_at) FROM storm_groups WHERE target = $1",
    parked=_PARKED.format("$1", "$2") + " ORDER BY d.id",
    parked_key=_PARKED.format("$1", "$2") + " AND d.group_key = $3 ORDER BY d.id",
    carry="""
UPDATE deliveries SET carrier = $1, updated_at = $2 WHERE id = ANY($3::bigint[])""",
    release="""
UPDATE deliveries SET state = 'pending', next_attempt_at = $1, updated_at = $1, storm_checked = 1
WHERE id = $2 AND state = 'grouped' AND carrier IS NULL""",
    neighbours="""
SELECT n.body FROM notifications AS n
WHERE n.event_at BETWEEN $1 AND $2
  AND EXISTS (SELECT 1 FROM deliveries AS d WHERE d.notification_id = n.id AND d.target = $3)
ORDER BY n.event_at LIMIT 1000""",
    ids=_list_ids,
)

# Storm transactions of one target run one at a time across replicas (SPEC §9).
# The two-key form keeps clear of single-key advisory locks (migrations).
POSTGRES_LOCK = "SELECT pg_advisory_xact_lock(1936684909, hashtext($1))"
PRUNE_GROUPS_SQLITE = "DELETE FROM storm_groups WHERE flush_at IS NULL AND updated_at < ?"
PRUNE_GROUPS_POSTGRES = "DELETE FROM storm_groups WHERE flush_at IS NULL AND updated_at < $1"
