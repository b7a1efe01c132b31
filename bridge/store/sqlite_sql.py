"""The SQL of the SQLite store, kept apart so the store reads as behaviour.

Partial indexes (see migrations/sqlite/0001_init.sql) serve a query only when its
WHERE repeats the index condition verbatim, so queries meant to walk
`deliveries_open` say `state IN ('pending', 'in_flight')` exactly as the index does.
"""

from __future__ import annotations

from collections.abc import Sequence

# -- schema version (the migration runner's table) -----------------------------------

CREATE_SCHEMA_VERSION = """
CREATE TABLE IF NOT EXISTS schema_version (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at REAL NOT NULL
)"""
SCHEMA_VERSION = "SELECT coalesce(max(version), 0) FROM schema_version"
RECORD_VERSION = "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)"

# -- ingest ---------------------------------------------------------------------------

SEEN_TICKETS = """
SELECT ticket, revision, fingerprint, first_seen_at, updated_at
FROM seen_tickets WHERE ticket IN (SELECT value FROM json_each(?))"""
# first_seen_at keeps the stored value: it is the first sighting, whatever the caller says.
INSERT_TICKET_IF_ABSENT = """
INSERT INTO seen_tickets (ticket, revision, fingerprint, first_seen_at, updated_at)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (ticket) DO NOTHING"""
UPDATE_TICKET_IF_REVISION = """
UPDATE seen_tickets SET revision = ?, fingerprint = ?, updated_at = ?
WHERE ticket = ? AND revision = ?"""
DELETE_JSON = "DELETE FROM kv WHERE kind = ? AND key = ?"
PUT_TICKET = """
INSERT INTO seen_tickets (ticket, revision, fingerprint, first_seen_at, updated_at)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (ticket) DO UPDATE SET
    revision = excluded.revision,
    fingerprint = excluded.fingerprint,
    updated_at = excluded.updated_at"""
INSERT_NOTIFICATION = """
INSERT INTO notifications (id, type, created_at, event_at, body)
VALUES (?, ?, ?, ?, ?)"""
INSERT_DELIVERY = """
INSERT INTO deliveries (notification_id, target, state, attempts, next_attempt_at,
                        created_at, updated_at)
VALUES (?, ?, 'pending', 0, ?, ?, ?)"""
# Rows some of which go in already claimed (handed to the local dispatcher): one
# statement for the batch, its rows given as a JSON array of
# [notification_id, target, state, next_attempt_at, lease_until, claim_token] and
# inserted in array order; RETURNING gives the new ids.
INSERT_DELIVERIES_CLAIMED = """
INSERT INTO deliveries (notification_id, target, state, attempts, next_attempt_at,
                        lease_until, claim_token, created_at, updated_at)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
       0, json_extract(value, '$[3]'), json_extract(value, '$[4]'),
       json_extract(value, '$[5]'), :now, :now
FROM json_each(:rows) ORDER BY key
RETURNING id, notification_id, target"""
SET_CURSOR = """
INSERT INTO cursors (job, value, updated_at) VALUES (?, ?, ?)
ON CONFLICT (job) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"""
GET_CURSOR = "SELECT value FROM cursors WHERE job = ?"
PUT_JSON = """
INSERT INTO kv (kind, key, value, updated_at) VALUES (?, ?, ?, ?)
ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"""
GET_JSON = "SELECT value FROM kv WHERE kind = ? AND key = ?"
LIST_JSON = "SELECT key, value FROM kv WHERE kind = ? ORDER BY key"

# -- dispatch -------------------------------------------------------------------------

# Due = pending and its next attempt has come, or in flight and its lease expired
# (the sender crashed). Walks deliveries_open in id order, i.e. creation order,
# reading only the index; the outer UPDATE touches just the rows it takes.
#
# RETURNING carries what a sender needs, so a claim is one statement and one trip
# to the connection's thread (measured: ~60 µs of CPU and up to a few ms of latency
# per trip while the loop is busy). `created_at` is the delivery's, when it was
# queued: a replay or an API retry of an old notification gets its own max_age_s.
# CAST(... AS TEXT): in RETURNING a bare `notification_id` has no affinity, and
# SQLite then scans notifications for each row instead of using its primary key
# (measured: a 16-row claim at 20k notifications took 12 ms, 0.1 ms with the CAST;
# test_claim_uses_notification_key guards this).
# A paused, held or failing target gives out nothing: checked in the same statement
# (one trip to the database thread per claim, and one state of the file).
_NOT_BLOCKED = """
  AND NOT EXISTS (
    SELECT 1 FROM target_state AS s
    WHERE s.target = :target
      AND (s.paused = 1 OR coalesce(s.hold_until, 0) > :now OR s.probe_at IS NOT NULL))"""
CLAIM = f"""
UPDATE deliveries
SET state = 'in_flight', lease_until = :lease, claim_token = :token, updated_at = :now
WHERE id IN (
    SELECT id FROM deliveries
    WHERE target = :target
      AND state IN ('pending', 'in_flight')
      AND CASE state WHEN 'pending' THEN next_attempt_at <= :now ELSE lease_until < :now END
    ORDER BY id LIMIT :limit
){_NOT_BLOCKED}
RETURNING id, notification_id,
    (SELECT n.type FROM notifications AS n WHERE n.id = CAST(notification_id AS TEXT)),
    target,
    (SELECT n.body FROM notifications AS n WHERE n.id = CAST(notification_id AS TEXT)),
    attempts, created_at,
    (SELECT n.event_at FROM notifications AS n WHERE n.id = CAST(notification_id AS TEXT))"""  # noqa: S608 - constants
# Strict FIFO: only the oldest unfinished row, and only when it is due itself.
CLAIM_FIFO = f"""
UPDATE deliveries
SET state = 'in_flight', lease_until = :lease, claim_token = :token, updated_at = :now
WHERE id = (
    SELECT id FROM deliveries
    WHERE target = :target AND state IN ('pending', 'in_flight')
    ORDER BY id LIMIT 1
) AND CASE state WHEN 'pending' THEN next_attempt_at <= :now ELSE lease_until < :now END
{_NOT_BLOCKED}
RETURNING id, notification_id,
    (SELECT n.type FROM notifications AS n WHERE n.id = CAST(notification_id AS TEXT)),
    target,
    (SELECT n.body FROM notifications AS n WHERE n.id = CAST(notification_id AS TEXT)),
    attempts, created_at,
    (SELECT n.event_at FROM notifications AS n WHERE n.id = CAST(notification_id AS TEXT))"""  # noqa: S608 - constants
FIFO_HEAD = """
SELECT state, next_attempt_at, lease_until FROM deliveries
WHERE target = ? AND state IN ('pending', 'in_flight') ORDER BY id LIMIT 1"""
NEXT_DUE = """
SELECT
    (SELECT min(next_attempt_at) FROM deliveries WHERE target = ? AND state = 'pending'),
    (SELECT min(lease_until) FROM deliveries WHERE target = ? AND state = 'in_flight')"""
# Only under the claim the attempt was made under, while it is live: after expiry
# another claimer may be sending the row, and a late outcome must not undo its work.
RECORD_OUTCOME = """
UPDATE deliveries
SET state = :state, attempts = :attempts, last_status = :status, last_error = :error,
    next_attempt_at = :next, lease_until = NULL, claim_token = NULL, updated_at = :now
WHERE id = :id AND state = 'in_flight'
  AND (:claim IS NULL OR (claim_token = :claim AND lease_until >= :now))"""
RECOVER = """
UPDATE deliveries SET state = 'pending', lease_until = NULL, claim_token = NULL, updated_at = ?
WHERE state = 'in_flight'
RETURNING target"""
# Live claims of a target (all claimers): what `max_in_flight` caps.
LIVE_CLAIMS = """
SELECT count(*) FROM deliveries WHERE target = ? AND state = 'in_flight' AND lease_until >= ?"""
# Failing (probe_at set): only the probe goes, through CLAIM_PROBE (SPEC §4).
TARGET_BLOCKED = """
SELECT 1 FROM target_state
WHERE target = ? AND (paused = 1 OR coalesce(hold_until, 0) > ? OR probe_at IS NOT NULL)"""
ENSURE_TARGET_STATE = """
INSERT INTO target_state (target, paused, updated_at) VALUES (?, 0, ?)
ON CONFLICT (target) DO NOTHING"""
PAUSE_TARGET = """
UPDATE target_state SET paused = 1, paused_reason = ?, hold_until = NULL, updated_at = ?
WHERE target = ? AND paused = 0"""
RESUME_TARGET = """
UPDATE target_state SET paused = 0, paused_reason = NULL, updated_at = ?
WHERE target = ? AND paused = 1"""
HOLD_TARGET = """
UPDATE target_state SET hold_until = max(coalesce(hold_until, 0), ?), updated_at = ?
WHERE target = ?"""
RESERVE_SLOT = """
UPDATE target_state SET next_send_at = max(coalesce(next_send_at, 0), :now) + :interval
WHERE target = :target
RETURNING next_send_at - :interval"""
# -- the poll lease -------------------------------------------------------------------
ACQUIRE_LEASE = """
INSERT INTO poll_lease (name, holder, epoch, expires_at) VALUES ('poll', :holder, 1, :until)
ON CONFLICT (name) DO UPDATE SET
    holder = excluded.holder, epoch = poll_lease.epoch + 1, expires_at = excluded.expires_at
WHERE poll_lease.holder IS NULL OR poll_lease.holder = :holder
   OR poll_lease.expires_at < :now
RETURNING holder, epoch, expires_at"""
RENEW_LEASE = """
UPDATE poll_lease SET expires_at = :until
WHERE name = 'poll' AND holder = :holder AND epoch = :epoch AND expires_at >= :now
RETURNING holder, epoch, expires_at"""
RELEASE_LEASE = """
UPDATE poll_lease SET holder = NULL, expires_at = :now
WHERE name = 'poll' AND holder = :holder AND epoch = :epoch"""
GET_LEASE = "SELECT holder, epoch, expires_at FROM poll_lease WHERE name = 'poll'"
LEASE_LIVE = """
SELECT 1 FROM poll_lease
WHERE name = 'poll' AND holder = ? AND epoch = ? AND expires_at >= ?"""

GET_TARGET_STATE = """
SELECT paused, paused_reason, hold_until, failures, probe_at FROM target_state WHERE target = ?"""
SET_TARGET_STATE = """
INSERT INTO target_state (target, paused, paused_reason, hold_until, failures, probe_at,
                          updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (target) DO UPDATE SET
    paused = excluded.paused,
    paused_reason = excluded.paused_reason,
    hold_until = excluded.hold_until,
    failures = excluded.failures,
    probe_at = excluded.probe_at,
    updated_at = excluded.updated_at"""
# The probe of a failing target: the oldest claimable row, due or not (the probe
# cadence, not each row's own backoff, decides when it goes).
CLAIM_PROBE = """
UPDATE deliveries
SET state = 'in_flight', lease_until = :lease, claim_token = :token, updated_at = :now
WHERE id = (
    SELECT id FROM deliveries
    WHERE target = :target
      AND state IN ('pending', 'in_flight')
      AND CASE state WHEN 'pending' THEN 1 ELSE lease_until < :now END
    ORDER BY id LIMIT 1
)
RETURNING id, notification_id,
    (SELECT n.type FROM notifications AS n WHERE n.id = CAST(notification_id AS TEXT)),
    target,
    (SELECT n.body FROM notifications AS n WHERE n.id = CAST(notification_id AS TEXT)),
    attempts, created_at,
    (SELECT n.event_at FROM notifications AS n WHERE n.id = CAST(notification_id AS TEXT))"""
SET_FAILURES = """
UPDATE target_state SET failures = ?, probe_at = ?, updated_at = ? WHERE target = ?"""
SET_PROBE_AT = "UPDATE target_state SET probe_at = ?, updated_at = ? WHERE target = ?"
RELEASE_WAITING = """
UPDATE deliveries SET next_attempt_at = :now, updated_at = :now
WHERE target = :target AND state = 'pending' AND next_attempt_at > :now"""
EXPIRE_PENDING = """
UPDATE deliveries
SET state = 'dead', last_error = :error, next_attempt_at = NULL, updated_at = :now
WHERE target = :target AND state = 'pending' AND created_at < :before"""

# -- operations -----------------------------------------------------------------------

RETRY_DEAD = """
UPDATE deliveries
SET state = 'pending', attempts = 0, next_attempt_at = ?, lease_until = NULL, updated_at = ?,
    created_at = ?,  -- re-queued now: max_age_s counts afresh
    storm_checked = 1  -- an operator's retry is not grouped or suppressed again
WHERE id = ? AND state IN ('dead', 'suppressed')
RETURNING target"""
REPLAY = """
INSERT INTO deliveries (notification_id, target, state, attempts, next_attempt_at,
                        created_at, updated_at, storm_checked)
SELECT n.id, :target, 'pending', 0, :now, :now, :now, 1  -- replays pass storm control
FROM notifications AS n
WHERE n.created_at BETWEEN :since AND :until
  -- only what was routed to this target: its filter applied when it was created
  AND EXISTS (SELECT 1 FROM deliveries AS o WHERE o.notification_id = n.id AND o.target = :target)
  AND NOT EXISTS (
      SELECT 1 FROM deliveries AS d
      WHERE d.notification_id = n.id
        AND d.target = :target
        AND d.state IN ('pending', 'in_flight')
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
COUNT_NOTIFICATIONS_OF_TYPE = "SELECT count(*) FROM notifications WHERE type = ?"


def list_deliveries(clauses: Sequence[str]) -> str:
    """The list query with the given constant WHERE fragments (values stay parameters)."""
    where = " AND ".join(clauses) or "1"
    return f"""
SELECT d.id, d.notification_id, n.type, d.target, d.state, d.attempts, d.last_status,
       d.last_error, d.next_attempt_at, d.created_at
FROM deliveries AS d JOIN notifications AS n ON n.id = d.notification_id
WHERE {where}
ORDER BY d.id DESC LIMIT ?"""  # noqa: S608 - clauses are constants from sqlite.py


# -- retention ------------------------------------------------------------------------

PRUNABLE_NOTIFICATIONS = """
SELECT n.id FROM notifications AS n
WHERE n.created_at < ?
  AND NOT EXISTS (
      SELECT 1 FROM deliveries AS d
      WHERE d.notification_id = n.id AND d.state IN ('pending', 'in_flight')
  )
  -- nor what still waits for its group or the end of a quiet hour
  AND NOT EXISTS (
      SELECT 1 FROM deliveries AS d
      WHERE d.notification_id = n.id AND d.carrier IS NULL AND d.state IN ('grouped', 'held')
  )
ORDER BY n.created_at LIMIT ?"""
DELETE_DELIVERIES_OF = """
DELETE FROM deliveries WHERE notification_id IN (SELECT value FROM json_each(?))"""
DELETE_NOTIFICATIONS = "DELETE FROM notifications WHERE id IN (SELECT value FROM json_each(?))"
PRUNE_TICKETS = "DELETE FROM seen_tickets WHERE updated_at < ?"
PRUNE_KV = "DELETE FROM kv WHERE updated_at < ?"
