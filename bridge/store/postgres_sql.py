"""The SQL of the PostgreSQL store, kept apart so the store reads as behaviour.

Batches travel as arrays (`unnest`), so an ingest of 100 notifications is a few
statements, not hundreds. Expiries several replicas must agree on (the poll
lease) use the database clock, `extract(epoch FROM clock_timestamp())`.
"""

from __future__ import annotations

from collections.abc import Sequence

DB_NOW = "extract(epoch FROM clock_timestamp())::float8"
CHANNEL = "fleet_bridge_work"  # NOTIFY payload: a JSON list of target names

# -- schema version -------------------------------------------------------------------

CREATE_SCHEMA_VERSION = """
CREATE TABLE IF NOT EXISTS schema_version (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at double precision NOT NULL
)"""
SCHEMA_VERSION = "SELECT coalesce(max(version), 0) FROM schema_version"
RECORD_VERSION = "INSERT INTO schema_version (version, name, applied_at) VALUES ($1, $2, $3)"
# One key for "fleet-bridge migrates": whichever replica starts first takes it.
MIGRATION_LOCK_KEY = 0x666C6565_7462  # "fleetb"

# -- ingest ---------------------------------------------------------------------------

SEEN_TICKETS = """
SELECT ticket, revision, fingerprint, first_seen_at, updated_at
FROM seen_tickets WHERE ticket = ANY($1::text[])"""
PUT_TICKETS = """
INSERT INTO seen_tickets (ticket, revision, fingerprint, first_seen_at, updated_at)
SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::float8[], $5::float8[])
ON CONFLICT (ticket) DO UPDATE SET
    revision = excluded.revision,
    fingerprint = excluded.fingerprint,
    updated_at = excluded.updated_at"""
# Migration 0006: the ingest's writes and its NOTIFY in one call (see PostgresIngestTx).
INGEST = """
SELECT fleet_bridge_ingest(
    $1::text[], $2::int[], $3::text[], $4::float8[], $5::float8[],
    $6::text[], $7::int[], $8::text[], $9::float8[], $10::int[],
    $11::text[], $12::text[], $13::float8[], $14::float8[], $15::text[],
    $16::text[], $17::text[], $18::float8[], $19,
    $20, $21, $22, $23, $24, $25, $26, $27)"""
GET_CURSOR = "SELECT value FROM cursors WHERE job = $1"
PUT_JSON = """
INSERT INTO kv (kind, key, value, updated_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"""
GET_JSON = "SELECT value FROM kv WHERE kind = $1 AND key = $2"
DELETE_JSON = "DELETE FROM kv WHERE kind = $1 AND key = $2"
LIST_JSON = "SELECT key, value FROM kv WHERE kind = $1 ORDER BY key"
NOTIFY = "SELECT pg_notify($1, $2)"

# -- dispatch -------------------------------------------------------------------------

# The claim is a function (migrations/postgresql/0002_claim_function.sql): its
# statements need fresh snapshots one after another, and it costs one round trip.
CLAIM = "SELECT * FROM fleet_bridge_claim($1, $2, $3, $4, $5, $6, $7)"
# Migration 0005: the outcome columns of RECORD_OUTCOMES, then the claim and the
# in-flight share request.
CLAIM_SHARE = """
SELECT * FROM fleet_bridge_claim_share(
    $1::bigint[], $2::text[], $3::int[], $4::int[], $5::text[], $6::float8[], $7::text[],
    $8, $9, $10, $11, $12, $13, $14, $15, $16)"""
FIFO_HEAD = """
SELECT state, next_attempt_at, lease_until FROM deliveries
WHERE target = $1 AND state IN ('pending', 'in_flight') ORDER BY id LIMIT 1"""
NEXT_DUE = """
SELECT
    (SELECT min(next_attempt_at) FROM deliveries WHERE target = $1 AND state = 'pending'),
    (SELECT min(lease_until) FROM deliveries WHERE target = $1 AND state = 'in_flight')"""
# Migration 0006: by primary key whatever the statistics say.
RECORD_OUTCOMES = """
SELECT fleet_bridge_record_outcomes(
    $1::bigint[], $2::text[], $3::int[], $4::int[], $5::text[], $6::float8[], $7::text[], $8)"""
RECOVER_EXPIRED = """
UPDATE deliveries SET state = 'pending', lease_until = NULL, claim_token = NULL, updated_at = $1
WHERE state = 'in_flight' AND lease_until < $1
RETURNING target"""
GET_TARGET_STATE = """
SELECT paused, paused_reason, hold_until, failures, probe_at FROM target_state WHERE target = $1"""
LOCK_TARGET_STATE = GET_TARGET_STATE + " FOR UPDATE"
SET_FAILURES = """
UPDATE target_state SET failures = $2, probe_at = $3, updated_at = $4 WHERE target = $1"""
SET_PROBE_AT = "UPDATE target_state SET probe_at = $2, updated_at = $3 WHERE target = $1"
SET_TARGET_STATE = """
INSERT INTO target_state (target, paused, paused_reason, hold_until, failures, probe_at,
                          updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (target) DO UPDATE SET
    paused = excluded.paused,
    paused_reason = excluded.paused_reason,
    hold_until = excluded.hold_until,
    failures = excluded.failures,
    probe_at = excluded.probe_at,
    updated_at = excluded.updated_at"""
# The probe of a failing target: the oldest claimable row, due or not.
CLAIM_PROBE = """
WITH c AS (
UPDATE deliveries AS d
SET state = 'in_flight', lease_until = $3, claim_token = $4, updated_at = $2
WHERE d.id = (
    SELECT id FROM deliveries
    WHERE target = $1
      AND state IN ('pending', 'in_flight')
      AND (state = 'pending' OR lease_until < $2)
    ORDER BY id LIMIT 1
    FOR UPDATE SKIP LOCKED
)
RETURNING d.id, d.notification_id, d.target, d.attempts, d.created_at)
SELECT c.id, c.notification_id, n.type, c.target, n.body, c.attempts, c.created_at, n.event_at
FROM c JOIN notifications AS n ON n.id = c.notification_id"""
RELEASE_WAITING = """
UPDATE deliveries SET next_attempt_at = $2, updated_at = $2
WHERE target = $1 AND state = 'pending' AND next_attempt_at > $2"""
EXPIRE_PENDING = """
UPDATE deliveries
SET state = 'dead', last_error = $4, next_attempt_at = NULL, updated_at = $3
WHERE target = $1 AND state = 'pending' AND created_at < $2"""
ENSURE_TARGET_STATE = """
INSERT INTO target_state (target, paused, updated_at) VALUES ($1, false, $2)
ON CONFLICT (target) DO NOTHING"""
PAUSE_TARGET = """
UPDATE target_state SET paused = true, paused_reason = $2, hold_until = NULL, updated_at = $3
WHERE target = $1 AND NOT paused"""
RESUME_TARGET = """
UPDATE target_state SET paused = false, paused_reason = NULL, updated_at = $2
WHERE target = $1 AND paused"""
HOLD_TARGET = """
UPDATE target_state SET hold_until = greatest(coalesce(hold_until, 0), $2::float8), updated_at = $3
WHERE target = $1"""
RESERVE_SLOT = """
UPDATE target_state
SET next_send_at = greatest(coalesce(next_send_at, 0), $2::float8) + $3::float8
WHERE target = $1
RETURNING next_send_at - $3::float8"""

# -- the poll lease (database clock) --------------------------------------------------

ACQUIRE_LEASE = f"""
INSERT INTO poll_lease (name, holder, epoch, expires_at)
VALUES ('poll', $1, 1, {DB_NOW} + $2::float8)
ON CONFLICT (name) DO UPDATE SET
    holder = excluded.holder, epoch = poll_lease.epoch + 1, expires_at = excluded.expires_at
WHERE poll_lease.holder IS NULL OR poll_lease.holder = excluded.holder
   OR poll_lease.expires_at < {DB_NOW}
RETURNING holder, epoch, expires_at"""
RENEW_LEASE = f"""
UPDATE poll_lease SET expires_at = {DB_NOW} + $3::float8
WHERE name = 'poll' AND holder = $1 AND epoch = $2 AND expires_at >= {DB_NOW}
RETURNING holder, epoch, expires_at"""
RELEASE_LEASE = f"""
UPDATE poll_lease SET holder = NULL, expires_at = {DB_NOW}
WHERE name = 'poll' AND holder = $1 AND epoch = $2"""
GET_LEASE = "SELECT holder, epoch, expires_at FROM poll_lease WHERE name = 'poll'"

# -- operations -----------------------------------------------------------------------

RETRY_DEAD = """
UPDATE deliveries
SET state = 'pending', attempts = 0, next_attempt_at = $1, lease_until = NULL,
    claim_token = NULL, updated_at = $1, created_at = $1, storm_checked = 1
WHERE id = $2 AND state IN ('dead', 'suppressed')
RETURNING target"""
REPLAY = """
INSERT INTO deliveries (notification_id, target, state, attempts, next_attempt_at,
                        created_at, updated_at, storm_checked)
SELECT n.id, $1, 'pending', 0, $4, $4, $4, 1  -- replays pass storm control
FROM notifications AS n
WHERE n.created_at BETWEEN $2 AND $3
  AND EXISTS (SELECT 1 FROM deliveries AS o WHERE o.notification_id = n.id AND o.target = $1)
  AND NOT EXISTS (
      SELECT 1 FROM deliveries AS d
      WHERE d.notification_id = n.id AND d.target = $1 AND d.state IN ('pending', 'in_flight')
  )
ORDER BY n.created_at, n.id"""
QUEUE_COUNTS = """
SELECT target, state, count(*) FROM deliveries
WHERE state IN ('pending', 'in_flight')
GROUP BY target, state
UNION ALL
SELECT target, 'dead', count(*) FROM deliveries
WHERE state = 'dead'
GROUP BY target"""
COUNT_NOTIFICATIONS = "SELECT count(*) FROM notifications"
COUNT_NOTIFICATIONS_OF_TYPE = "SELECT count(*) FROM notifications WHERE type = $1"


def list_deliveries(clauses: Sequence[str], limit_param: int) -> str:
    """The list query with the given constant WHERE fragments (values stay parameters)."""
    where = " AND ".join(clauses) or "true"
    return f"""
SELECT d.id, d.notification_id, n.type, d.target, d.state, d.attempts, d.last_status,
       d.last_error, d.next_attempt_at, d.created_at
FROM deliveries AS d JOIN notifications AS n ON n.id = d.notification_id
WHERE {where}
ORDER BY d.id DESC LIMIT ${limit_param}"""


# -- retention ------------------------------------------------------------------------

PRUNABLE_NOTIFICATIONS = """
SELECT n.id FROM notifications AS n
WHERE n.created_at < $1
  AND NOT EXISTS (
      SELECT 1 FROM deliveries AS d
      WHERE d.notification_id = n.id AND d.state IN ('pending', 'in_flight')
  )
  AND NOT EXISTS (
      SELECT 1 FROM deliveries AS d
      WHERE d.notification_id = n.id AND d.carrier IS NULL AND d.state IN ('grouped', 'held')
  )
ORDER BY n.created_at LIMIT $2"""
DELETE_DELIVERIES_OF = "DELETE FROM deliveries WHERE notification_id = ANY($1::text[])"
DELETE_NOTIFICATIONS = "DELETE FROM notifications WHERE id = ANY($1::text[])"
PRUNE_TICKETS = "DELETE FROM seen_tickets WHERE updated_at < $1"
PRUNE_KV = "DELETE FROM kv WHERE updated_at < $1"
